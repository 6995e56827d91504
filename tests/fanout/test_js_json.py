"""JavaScript's JSON, checked against JavaScript itself.

The feeds write JSON as a Node.js server does for a JSON text it got,
``JSON.stringify(JSON.parse(text))`` (``relay/fanout/shape.py``), and the wire tests build their
expected frames with an oracle of their own (``tests/raw_sse.py``). Both are written from the
ECMAScript rules; here Node.js (the machine's, as the React client's build uses) decides, for
the spellings where Python and JavaScript differ, so neither can drift with the other.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from relay.fanout import shape
from tests.raw_sse import js_json

# Texts whose JavaScript spelling differs from Python's json.dumps(json.loads(...)).
TEXTS = [
    '{"a":12.50,"b":40.00,"c":1.0,"d":-0.0,"e":0}',
    '{"big":12345678901234567890,"max":9007199254740993,"neg":-12345678901234567890}',
    '{"small":0.00001,"smaller":0.000001,"tiny":1e-7,"x":123e-20,"y":5e-324}',
    '{"e21":1e21,"e20":100000000000000000000,"huge":1.7976931348623157e308,"m":1.5e300}',
    '{"2":"b","1":"a","x":1,"10":"c","01":"d","4294967295":"e","4294967294":"f"}',
    '{"s":"\\u00e9\\u2028\\u2029\\ud83d\\ude00","ctrl":"\\u0001\\u001f\\u007f","q":"\\"\\\\/"}',
    '{"lone":"\\ud800","nested":{"list":[1,2.50,{"3":3,"k":[]}],"t":true,"n":null}}',
    '{"dup":1,"other":2,"dup":3}',
    "[0.1,0.2,0.30000000000000004,1e100,123456789012345680000,-1e-7]",
]


@pytest.fixture(scope="module")
def node_says() -> dict[str, str]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node on PATH: JavaScript's own JSON cannot be asked")
    program = (
        "const texts = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "process.stdout.write(JSON.stringify(texts.map(t => JSON.stringify(JSON.parse(t)))));"
    )
    done = subprocess.run(
        [node, "-e", program],
        input=json.dumps(TEXTS),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    answers = json.loads(done.stdout)
    return dict(zip(TEXTS, answers, strict=True))


@pytest.mark.parametrize("text", TEXTS)
def test_the_feeds_write_json_as_javascript_does(node_says: dict[str, str], text: str) -> None:
    assert shape.encode(shape.parse(text)) == node_says[text]


@pytest.mark.parametrize("text", TEXTS)
def test_the_wire_tests_oracle_agrees_with_javascript(node_says: dict[str, str], text: str) -> None:
    assert js_json(text) == node_says[text]
