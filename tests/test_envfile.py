"""The documented settings file: generated from the knob table, so it lists every setting."""

from __future__ import annotations

import io
import re
from contextlib import redirect_stdout

import attrs
from twisted.trial.unittest import SynchronousTestCase

from mcpd import envfile
from mcpd.config import KNOBS, read_env_file, resolve
from tests.daemon import REPO_ROOT

SHIPPED = REPO_ROOT / "etc" / "mcpd.env"


class EnvFileTests(SynchronousTestCase):
    def test_shipped_file_is_the_generated_one(self) -> None:
        """etc/mcpd.env is exactly what the knob table gives: a knob added without regenerating
        it fails here (``python -m mcpd.envfile > etc/mcpd.env``)."""
        self.assertEqual(
            SHIPPED.read_text(encoding="utf-8"),
            envfile.render(),
            "etc/mcpd.env is stale: regenerate it with `python -m mcpd.envfile > etc/mcpd.env`",
        )

    def test_every_knob_is_documented_at_its_default(self) -> None:
        text = envfile.render()
        for knob in KNOBS:
            self.assertRegex(text, rf"(?m)^#{knob.env}={re.escape(envfile.shown_default(knob))}$")
            self.assertIn(f"(--{knob.flag}", text)

    def test_uncommented_defaults_mean_the_same(self) -> None:
        """Every line uncommented gives the defaults back (those without a default stay unset)."""
        path = self.mktemp()
        lines = [line[1:] if re.match(r"^#[A-Z_]+=.", line) else line for line in envfile.render().splitlines()]
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines))
        values = read_env_file(path)
        # PORT given in the file counts as given (--port beside --listen), at the same value.
        self.assertEqual(resolve({}, {}, values), attrs.evolve(resolve({}, {}, {}), port_given=True))

    def test_installation_defaults(self) -> None:
        text = envfile.render({"API_KEY_FILE": "/etc/mcpd/keys"}, set_by="mcpd.service")
        self.assertIn("#API_KEY_FILE=/etc/mcpd/keys\n", text)
        self.assertIn("Set to /etc/mcpd/keys by mcpd.service (mcpd's own default: unset).", text)
        with self.assertRaises(ValueError):
            envfile.render({"NO_SUCH_SETTING": "1"})
        self.assertNotIn("NO_SUCH_SETTING", envfile.render({"NO_SUCH_SETTING": "1"}, ignore_unknown=True))

    def test_command_line(self) -> None:
        out = io.StringIO()
        with redirect_stdout(out):
            self.assertEqual(envfile.main(["--default", "PORT=9000", "--set-by", "a unit"]), 0)
        self.assertIn("#PORT=9000\n", out.getvalue())
