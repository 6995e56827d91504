"""The component says durations and estimates in the server's words (relay/state/eta.py).

The component's pure wording helpers are read from the script itself, run under Node: the
script defines the element on a stand-in ``customElements`` and the test calls
``SystemStatus.wording`` (the helpers the element renders with) for a table of values, against
``human_duration`` and ``eta_text`` for the same values.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from relay.state.eta import eta_text, human_duration

SCRIPT = Path(__file__).resolve().parents[2] / "relay" / "http" / "static" / "system-status.js"

# Loads the classic script as a page would, with just enough of a window to define the element.
RUNNER = r"""
const fs = require("fs");
const vm = require("vm");
let defined = null;
const window = {
  customElements: { get: () => undefined, define: (name, cls) => { defined = cls; } },
};
const context = vm.createContext({ window, HTMLElement: class {}, Intl, Date, console });
const source = fs.readFileSync(process.argv[1], "utf8");
vm.runInContext(source, context, { filename: "system-status.js" });
if (!defined || !defined.wording) throw new Error("the script defined no element with wording");
const cases = JSON.parse(fs.readFileSync(0, "utf8"));
const out = cases.map(([fn, arg]) => defined.wording[fn](arg));
process.stdout.write(JSON.stringify(out));
"""

SECONDS = [0, 0.4, 1, 9.6, 45, 59.9, 60, 61, 252.9, 299.5, 3599, 3600, 3661, 7380, 86399, 93784]
ESTIMATES: list[dict[str, Any]] = [
    {"low_s": 240.0, "high_s": 360.0},
    {"low_s": 290.0, "high_s": 310.0},
    {"low_s": 300.0, "high_s": 300.4},
    {"low_s": 45.0, "high_s": 90.0},
    {"low_s": 3000.0, "high_s": 5400.0},
    {"low_s": 600.0, "high_s": 900.0},
    {"low_s": 0.0, "high_s": 120.0},
    {"low_s": 0.2, "high_s": 0.6},
]


def component(calls: list[tuple[str, Any]]) -> list[Any]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node on PATH: the component's wording cannot be run")
    done = subprocess.run(
        [node, "-e", RUNNER, "--", str(SCRIPT)],
        input=json.dumps(calls),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:  # not a wording difference: the xfail below must not hide it
        raise RuntimeError(f"node could not run the component's wording: {done.stderr}")
    result = json.loads(done.stdout)
    if not isinstance(result, list) or len(result) != len(calls):
        raise RuntimeError(f"node answered {done.stdout!r}")
    return result


def test_durations_are_written_as_the_server_writes_them() -> None:
    said = component([("humanDuration", seconds) for seconds in SECONDS])
    assert said == [human_duration(seconds) for seconds in SECONDS]


def test_estimates_are_worded_as_the_server_words_them() -> None:
    said = component([("etaText", estimate) for estimate in ESTIMATES])
    assert said == [eta_text(estimate) for estimate in ESTIMATES]
