"""Implementations of the store interfaces of `mcpd.interfaces`: `mcpd.stores.memory` (in this
process, the default), `mcpd.stores.milvus` (the search index), `mcpd.stores.embedders`. A store
imports only the interfaces and its own libraries; each blocking store runs its work in a thread
pool of its own."""
