"""Fuzz targets: wire/'s frame decoder and path normalizer, and every parser of what the
relay and the box read from disk or a local peer (pitlink_testkit.fuzz_parsers).

Run through scripts/fuzz. A target takes raw bytes and raises (FuzzFinding, ParserFinding, or
whatever escaped from the code under test) only when it found a bug:

- frames: `wire.messages.decode` from either sender, on the bytes and on the same bytes as
  text, raises nothing but ProtocolError(BAD_REQUEST); a frame that decodes re-encodes to a
  frame that decodes to the same frame.
- paths: `wire.paths.normalize_path` raises nothing but PathError(BAD_REQUEST); what it
  accepts has no dot-only segment, no backslash, `%`, `//` or control character, is a fixed
  point of normalize(encode_path(.)), and the default allowlist admits it only under `/`,
  `/events` or `/httpfiles`.
- offers, keyset, current, ... (see pitlink_testkit.fuzz_parsers): each parser raises nothing
  but its documented refusal, RecursionError least of all.
- canary: the paths checks over a deliberately naive normalizer (decode, collapse slashes,
  refuse nothing). It must fail at once: it proves that the checks and the crash reporting
  work. It is not part of `all`.

Two engines. `atheris` (the default) is libFuzzer, coverage-guided over the bytecode of wire/
and of the parsers' modules.
`hypothesis` is a Hypothesis-driven loop over generated and mutated bytes, for a machine
where atheris has no wheel; it is not coverage-guided and finds less. Either way the seed
inputs below come first, a crashing input is saved as `<target>-crash-<sha1>` under the
crash folder (fuzz/crashes/ by default, gitignored) and the exit status is non-zero.
"""

from __future__ import annotations

import argparse
import base64
import gc
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import traceback
import types
import unicodedata
from collections.abc import Callable
from functools import partial
from pathlib import Path
from urllib.parse import unquote

from pitlink_testkit import fuzz_parsers
from wire.errors import ErrorCode, PathError, ProtocolError
from wire.messages import (
    CloudHello,
    Error,
    Fetch,
    Message,
    Ping,
    PitsHello,
    Pong,
    Response,
    Sender,
    Token,
    decode,
    encode,
)
from wire.paths import Allowlist, encode_path, normalize_path

ROOT = Path(__file__).resolve().parent.parent
CRASH_DIR = ROOT / "fuzz" / "crashes"
SENDERS: tuple[Sender, ...] = ("cloud", "pits")
ALLOWLIST = Allowlist()


class FuzzFinding(AssertionError):
    """An invariant a target checks does not hold (as opposed to an exception from wire/)."""


def _require(condition: bool, what: str, subject: object) -> None:
    if not condition:
        raise FuzzFinding(f"{what}: {subject!r}")


# -- frames -----------------------------------------------------------------------------------


def _as_text(data: bytes) -> str:
    # Undecodable bytes become lone surrogates, which decode must refuse, not choke on.
    return data.decode("utf-8", errors="surrogateescape")


def fuzz_frames(data: bytes) -> None:
    """decode raises only ProtocolError(BAD_REQUEST); what decodes survives a round trip."""
    for form in (data, _as_text(data)):
        for sender in SENDERS:
            try:
                frame = decode(form, sender=sender)
            except ProtocolError as exc:
                _require(type(exc) is ProtocolError, "decode raised a subclass", exc)
                _require(exc.code is ErrorCode.BAD_REQUEST, "decode raised another code", exc)
                continue
            text = encode(frame.message, frame_id=frame.id, now_ms=frame.ts)
            again = decode(text, sender=sender)
            # Compared as encoded text: NaN, which decode lets through, is unequal to itself.
            same = encode(again.message, frame_id=again.id, now_ms=again.ts) == text
            _require(same and again.type == frame.type, "round trip changed the frame", form)


def _frame(message: Message) -> bytes:
    return encode(message, frame_id="f1", now_ms=1_700_000_000_000).encode()


FRAME_SEEDS: list[bytes] = [
    _frame(CloudHello(protocol_version=1, server_time_ms=1, limits={"maxBodyBytes": 1 << 20})),
    _frame(PitsHello(protocol_version=1, pits_id="club-42", sw_version="1.0", features=("x",))),
    _frame(Fetch(method="GET", path="/events/e/Race.json", timeout_ms=5000)),
    _frame(Fetch(method="HEAD", path="/", timeout_ms=1, if_none_match='"sha256:00"')),
    _frame(Response(status=200, etag='"sha256:00"', content_type="application/json", body=b"[]")),
    _frame(Response(status=304, etag='"sha256:00"')),
    _frame(Error(code=ErrorCode.BUSY, message="busy", details={"retryAfter": 1})),
    _frame(Ping()),
    _frame(Pong()),
    _frame(Token(token="eyJhbGciOiJIUzI1NiJ9.e30.x")),
    b'{"id":"x","type":"response","ts":1,"payload":{"status":200,"bodyB64":"\xc3\xa9=="}}',
    b'{"id":"x","type":"response","ts":1,"payload":{"status":200,"headers":{"ETag":1}}}',
    b'{"id":"x","type":"hello","ts":1,"payload":{"protocolVersion":1,"features":[1]}}',
    b'{"id":"x","type":"error","ts":true,"payload":{"code":"NOPE","message":""}}',
    b'{"id":"x","type":"fetch","ts":1,"payload":{"method":"GET","path":"/","timeoutMs":-1}}',
    b'{"id":"\\ud800","type":"ping","ts":1e400,"payload":{"a":NaN}}',
    b"[" * 1030 + b"]" * 1030,
    b"",
    b"\xff\xfe",
]


# -- paths ------------------------------------------------------------------------------------

Normalizer = Callable[[str], str]


def _in_default_trees(path: str) -> bool:
    segments = [s for s in path.split("/") if s]
    return not segments or segments[0] in ("events", "httpfiles")


def check_accepted_path(out: str, normalize: Normalizer = normalize_path) -> None:
    """What normalization accepted: safe to send on, a fixed point, allowed only in its trees."""
    _require(out.startswith("/"), "does not start with /", out)
    _require("//" not in out, "repeated slash", out)
    _require("\\" not in out, "backslash", out)
    _require("%" not in out, "percent sign left", out)
    _require(not any(unicodedata.category(c) == "Cc" for c in out), "control character", out)
    _require(all(not s or s.strip(".") for s in out.split("/")), "segment made only of dots", out)
    _require(normalize(encode_path(out)) == out, "normalize is not idempotent", out)
    allowed = ALLOWLIST.allows(out)
    _require(allowed == _in_default_trees(out), "default allowlist disagrees", out)
    if allowed:
        _require(
            out in ("/", "/events", "/httpfiles") or out.startswith(("/events/", "/httpfiles/")),
            "allowed outside its trees",
            out,
        )


def fuzz_paths(data: bytes, normalize: Normalizer = normalize_path) -> None:
    """normalize raises only PathError(BAD_REQUEST); what it accepts passes the checks."""
    text = _as_text(data)
    for raw in (text, "/" + text):
        try:
            out = normalize(raw)
        except PathError as exc:
            _require(exc.code is ErrorCode.BAD_REQUEST, "normalize raised another code", exc)
            continue
        check_accepted_path(out, normalize)


_SLASHES = re.compile(r"/{2,}")


def naive_normalize(raw: str) -> str:
    """The canary's normalizer: decodes and collapses slashes, refuses nothing but a relative
    path, so that what the canary finds is the planted bug (`..` and friends get through)."""
    if not raw.startswith("/"):
        raise PathError(ErrorCode.BAD_REQUEST, "must start with /")
    return _SLASHES.sub("/", unquote(raw.split("?", 1)[0]))


PATH_SEEDS: list[bytes] = [
    s.encode("utf-8", errors="surrogatepass")
    for s in [
        "/",
        "/events/3a96b1b6/Race.json",
        "/httpfiles/Channels.json?cache=1#top",
        "//events//e///Race.json",
        "/events/%2e%2e/%2E%2E/etc",
        "/events/.%2e/x",
        "/events/%252e%252e/x",
        "/events/%5c..%5C..",
        "/events/..\\..",
        "/events/a%00.json",
        "/events/%0a%7f%C2%85",
        "/events/\u2024\u2024/\uff0e\uff0e/\u2025",
        "/events/%E2%80%A4%e2%80%a4/%EF%BC%8E%ef%bc%8e",
        "/events/%c0%ae%c0%ae/",
        "/httpfiles/%2F%2F..%2f",
        "/events/Zo%C3%AB.json",
        "/events/a%20b/%3F%23",
        "/../events",
        "/eventsx/../events",
        "/events/\ud800",
    ]
]

TARGETS: dict[str, Callable[[bytes], None]] = {
    "frames": fuzz_frames,
    "paths": fuzz_paths,
    **fuzz_parsers.TARGETS,
    "canary": partial(fuzz_paths, normalize=naive_normalize),
}
SEEDS: dict[str, list[bytes]] = {
    "frames": FRAME_SEEDS,
    "paths": PATH_SEEDS,
    **fuzz_parsers.SEEDS,
    "canary": PATH_SEEDS,
}
ALL = ("frames", "paths", *fuzz_parsers.TARGETS)


# -- engines ----------------------------------------------------------------------------------


def save_crash(crash_dir: Path, name: str, data: bytes) -> Path:
    crash_dir.mkdir(parents=True, exist_ok=True)
    path = crash_dir / f"{name}-crash-{hashlib.sha1(data).hexdigest()}"
    path.write_bytes(data)
    return path


def _instrument_subjects(atheris: types.ModuleType) -> None:
    """Coverage for wire/, the parsers' modules and these checks only: the rest of Python
    (tornado, ujson, jsonschema) is not the subject."""
    subjects = (*fuzz_parsers.SUBJECTS, __name__, fuzz_parsers.__name__)
    for obj in gc.get_objects():
        if isinstance(obj, types.FunctionType) and (obj.__module__ or "").startswith(subjects):
            atheris.instrument_func(obj)


def run_atheris_child(
    name: str, runs: int, seed: int, crash_dir: Path, corpus: Path, scratch: Path
) -> None:
    """Run libFuzzer in this process; it exits the process itself (77 on a crash)."""
    import atheris

    fuzz_parsers.set_scratch(scratch)
    _instrument_subjects(atheris)
    crash_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.argv[0],
        f"-runs={runs}",
        f"-seed={seed}",
        f"-artifact_prefix={crash_dir}/{name}-",
        "-timeout=10",
        "-max_len=4096",
        "-print_final_stats=1",
        str(corpus),
    ]
    atheris.Setup(argv, TARGETS[name])
    atheris.Fuzz()


def run_atheris(name: str, runs: int, seed: int, crash_dir: Path) -> int:
    # libFuzzer exits without unwinding, so the seed corpus (and the scratch folder the file
    # targets write in) live in folders owned by a parent.
    with (
        tempfile.TemporaryDirectory(prefix=f"pitlink-fuzz-{name}-") as corpus,
        tempfile.TemporaryDirectory(prefix=f"pitlink-fuzz-{name}-scratch-") as scratch,
    ):
        for i, data in enumerate(SEEDS[name]):
            (Path(corpus) / f"seed-{i:03d}").write_bytes(data)
        child = [
            *(sys.executable, "-m", "pitlink_testkit.fuzz_targets"),
            *("--engine", "atheris-child", "--target", name),
            *("--runs", str(runs), "--seed", str(seed), "--crash-dir", str(crash_dir)),
            *("--corpus", corpus, "--scratch", scratch),
        ]
        return subprocess.run(child, check=False).returncode


def run_hypothesis(name: str, runs: int, seed: int, crash_dir: Path) -> int:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    seeds = SEEDS[name]
    tokens = [b"%2e", b"%2E", b"..", b"%25", b"%5c", b"\\", b"%00", b"//", b"\xe2\x80\xa4"]
    tokens += [b"%ef%bc%8e", b"NaN", b'"', b"{", b"}", b"[", b"]", b":", b",", b"1e400"]
    spliced = st.builds(
        lambda base, at, cut, piece: base[:at] + piece + base[at + cut :],
        st.sampled_from(seeds),
        st.integers(0, 256),
        st.integers(0, 8),
        st.one_of(st.sampled_from(tokens), st.binary(max_size=8)),
    )
    last: list[bytes] = [b""]
    calls = [0]

    @settings(
        max_examples=runs,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.one_of(st.sampled_from(seeds), spliced, st.binary(max_size=512)))
    def loop(data: bytes) -> None:
        last[0] = data
        calls[0] += 1
        TARGETS[name](data)

    if seed:
        loop = hypothesis_seed(seed)(loop)

    print(f"== {name}: Hypothesis-driven loop (not coverage-guided), {runs} runs", flush=True)
    try:
        loop()
    except Exception:
        # Hypothesis replays the shrunk failing example last, so `last` holds it.
        traceback.print_exc()
        saved = save_crash(crash_dir, name, last[0])
        print(f"{name}: crashing input saved to {saved}", file=sys.stderr)
        return 1
    print(f"Done {calls[0]} runs: nothing found", flush=True)
    return 0


def reproduce(name: str, file: Path) -> int:
    data = file.read_bytes()
    print(f"{name} on {file}: {base64.b64encode(data).decode()} ({json.dumps(_as_text(data))})")
    try:
        TARGETS[name](data)
    except Exception:
        traceback.print_exc()
        return 1
    print("no failure")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000, help="inputs per target")
    parser.add_argument("--target", choices=[*TARGETS, "all"], default="all")
    parser.add_argument("--engine", choices=["atheris", "hypothesis", "atheris-child"])
    parser.add_argument("--seed", type=int, default=1, help="fixed by default; 0 for random")
    parser.add_argument("--crash-dir", type=Path, default=CRASH_DIR)
    parser.add_argument("--reproduce", type=Path, metavar="FILE", help="run one saved input")
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = list(ALL) if args.target == "all" else [args.target]
    if args.reproduce:
        return max(reproduce(name, args.reproduce) for name in names)
    if args.engine == "atheris-child":
        run_atheris_child(
            args.target, args.runs, args.seed, args.crash_dir, args.corpus, args.scratch
        )
        return 0  # not reached: libFuzzer exits the process
    engine = args.engine
    if engine is None:
        try:
            import atheris  # noqa: F401
        except ImportError:
            print("atheris is not installed: using the Hypothesis-driven loop", file=sys.stderr)
            engine = "hypothesis"
        else:
            engine = "atheris"
    run = run_atheris if engine == "atheris" else run_hypothesis
    failed = [name for name in names if run(name, args.runs, args.seed, args.crash_dir) != 0]
    if failed:
        print(f"fuzz: found a failure in {', '.join(failed)}; inputs in {args.crash_dir}")
        return 1
    print(f"fuzz: {', '.join(names)}: {args.runs} runs each ({engine}), nothing found")
    return 0


if __name__ == "__main__":
    sys.exit(main())
