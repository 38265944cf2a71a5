"""The `ahstream` command line: serve, analyze, send, listen, evaluate, score, train, export,
bench."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]

log = logging.getLogger("ahstream")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Session.__init__ (stream/session.py) raises ValueError outside these ranges; they are
# checked at start so that a bad value fails here, not in every session.
ANALYSIS_HZ_RANGE = (1.0, 50.0)
ASR_HOP_RANGE_S = (0.1, 5.0)
#: Numeric options (by dest) with their inclusive range, whichever command has them. A full
#: profile is served at the --tick-hz it was trained at, so that must suit a Session too.
RANGES: dict[str, tuple[float, float]] = {
    "analysis_hz": ANALYSIS_HZ_RANGE,
    "tick_hz": ANALYSIS_HZ_RANGE,
    "asr_hop": ASR_HOP_RANGE_S,
    "port": (1, 65535),
    # HuBERT's inputs up to 30 s: the TensorRT engines' profile (models.tensorrt) stops there
    "audio_window": (0.025, 30.0),
}
#: Secrets also read from the environment, which (unlike the command line) other users of
#: the machine cannot see in the process list.
ICE_SERVERS_ENV = "AHSTREAM_ICE_SERVERS"  # whitespace-separated --ice-server URLs
TOKEN_ENV = "AHSTREAM_TOKEN"  # --token of `send` and `listen`
#: Loggers kept at WARNING whatever --log-level says (see `main`).
WEBRTC_LOGGERS = ("aiortc", "aioice")
#: Numeric options (by dest) that must be > 0, whichever command has them.
POSITIVE = ("idle_timeout", "max_sessions", "max_duration", "epochs")


def _number_problem(args: argparse.Namespace) -> str | None:
    """The first numeric option of ``args`` out of its range (None: all fine)."""
    for dest, (low, high) in RANGES.items():
        value = getattr(args, dest, None)
        if value is not None and not low <= value <= high:
            return f"{_flag(dest)} must be between {low:g} and {high:g} (got {value:g})"
    for dest in POSITIVE:
        value = getattr(args, dest, None)
        if value is not None and not value > 0:
            return f"{_flag(dest)} must be > 0 (got {value:g})"
    return None


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _reason(exc: OSError) -> str:
    """The short reason of an OSError ("Address already in use"), without the call's words."""
    if exc.errno is not None and exc.errno > 0:
        return os.strerror(exc.errno)
    return exc.strerror or str(exc)


def _dir_problem(flag: str, directory: str | Path) -> str | None:
    """Why files cannot be written in ``directory``, made if missing (None: they can)."""
    path = Path(directory)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)  # its files may be health data
    except OSError as exc:
        return f"cannot create the {flag} directory {path}: {_reason(exc)}"
    if not os.access(path, os.W_OK):
        return f"the {flag} directory {path} is not writable"
    return None


def _future_dir_problem(flag: str, directory: str | Path) -> str | None:
    """Why ``directory`` could not be made and written later; creates nothing (None: it
    can), so a command that fails first leaves no empty directory behind."""
    path = Path(directory).absolute()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return f"the {flag} {path} cannot be created: {existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"the {flag} directory {existing} is not writable"
    return None


def _file_problem(flag: str, file: str | Path) -> str | None:
    """Why ``file`` cannot be written (its directory must exist; None: it can)."""
    path = Path(file)
    if path.is_dir():
        return f"{flag} {path} is a directory"
    if not path.parent.is_dir():
        return f"{flag} {path}: no such directory {path.parent}"
    if not os.access(path if path.exists() else path.parent, os.W_OK):
        return f"{flag} {path} is not writable"
    return None


def _weights_dir_problem(args: argparse.Namespace) -> str | None:
    """A --weights-dir that is not a directory (its files are checked as the models load)."""
    if args.weights_dir is not None and not Path(args.weights_dir).is_dir():
        return f"--weights-dir {args.weights_dir}: weights directory not found"
    return None


def _models(profile: str, **options: Any) -> Any:
    from models.profile import load_models

    return load_models(profile, **options)


def _backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """load_models options of --backend/--onnx-dir (lite) or --backend/--engine-dir/--device/
    --asr-model (full); exits with a clear message when the lite export cannot be used with
    the weights being loaded (the full profile's options are checked by
    `_full_options_problem` before)."""
    if args.profile == "full":
        options: dict[str, Any] = {"backend": args.backend, "device": args.device}
        if args.engine_dir is not None:
            options["engine_dir"] = args.engine_dir
        if args.asr_model is not None:
            options["whisper_path"] = args.asr_model
        return options
    if args.onnx_dir is None:
        return {"backend": args.backend}
    if args.backend != "onnxruntime":
        raise SystemExit(f"ahstream {args.command}: --onnx-dir needs --backend onnxruntime")
    from models.export import ExportError, lite_source_hashes, read_manifest

    try:
        read_manifest(args.onnx_dir, expect_sources=lite_source_hashes())
    except (ExportError, OSError, ValueError) as exc:
        raise SystemExit(f"ahstream {args.command}: --onnx-dir: {exc}") from exc
    return {"backend": "onnxruntime", "onnx_dir": args.onnx_dir}


def _full_options_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with --backend/--engine-dir/--device/--asr-model for --profile (None:
    nothing). The lite profile runs on the CPU with the bundled Whisper tiny.en and takes its
    ONNX export as --onnx-dir; the full profile's export is --engine-dir, and TensorRT needs
    the tensorrt module and an NVIDIA GPU (checked here, before any model loads)."""
    if args.profile == "lite":
        if args.backend == "tensorrt":
            return "--backend tensorrt is for --profile full (lite: native or onnxruntime)"
        if args.device not in ("auto", "cpu"):
            return f"the lite profile runs on the CPU (--device {args.device}: --profile full)"
        if args.engine_dir is not None:
            return "--engine-dir is for --profile full (lite takes its export as --onnx-dir)"
        if args.asr_model is not None:
            return "--asr-model is for --profile full (lite runs the bundled Whisper tiny.en)"
        if args.onnx_dir is not None and args.backend != "onnxruntime":
            return "--onnx-dir needs --backend onnxruntime"
        return None
    if args.weights_dir is None:
        return (
            "the full profile needs trained weights: give --weights-dir DIR, the output of "
            "`ahstream train --profile full`"
        )
    if args.onnx_dir is not None:
        return "--onnx-dir is the lite export; the full profile takes --engine-dir DIR"
    if args.backend == "tensorrt" and args.device == "cpu":
        return "--backend tensorrt runs on the GPU; --device cpu contradicts it"
    if args.backend == "native" and args.engine_dir is not None:
        return "--engine-dir needs --backend onnxruntime or tensorrt"
    if args.backend != "native":
        if args.engine_dir is None:
            return (
                f"--backend {args.backend} needs --engine-dir DIR, an `ahstream export --profile "
                "full --weights-dir CKPT --out DIR` of the --weights-dir checkpoint"
            )
        if not Path(args.engine_dir).is_dir():
            return f"--engine-dir {args.engine_dir}: export directory not found"
    from models.profile import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        return f"--device: {exc}"
    if args.backend == "onnxruntime" and args.device == "cuda":
        from models.runner import ort_providers

        try:
            ort_providers(device)
        except ValueError as exc:
            return f"--backend onnxruntime --device cuda: {exc}"
    if args.backend == "tensorrt":
        from models.tensorrt import (
            DEFAULT_PROFILE,
            TensorRTUnavailable,
            gpu_name,
            import_tensorrt,
        )

        engine_batch = DEFAULT_PROFILE["batch"][2]
        batch_max = getattr(args, "batch_max", None)  # serve's cross-session batches
        if batch_max is not None and batch_max > engine_batch:
            return (
                f"--batch-max {batch_max}: the TensorRT engines take at most {engine_batch} "
                f"items per run (their optimisation profile); use --batch-max {engine_batch} "
                "or less"
            )
        try:
            import_tensorrt()
            gpu_name()
        except TensorRTUnavailable as exc:
            return f"--backend tensorrt: {exc}"
    if args.asr_model is not None:
        from models.whisper import whisper_source

        try:
            whisper_source(args.asr_model)
        except FileNotFoundError as exc:
            return f"--asr-model: {exc}"
    return None


def _add_backend_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        default="native",
        choices=["native", "onnxruntime", "tensorrt"],
        help="native (default): the models as shipped (lite: numpy TCN and text heads, the "
        "FER graph under ONNX Runtime; full: the encoders in torch on --device); onnxruntime: "
        "lite: the FER, TCN and text heads from their ONNX export (`ahstream export`), each "
        "checked against the weights; full: the encoders and the TCN from --engine-dir; "
        "tensorrt (full only, NVIDIA GPU): the same as FP16 engines, each checked against "
        "ONNX Runtime before use",
    )
    parser.add_argument(
        "--onnx-dir",
        metavar="DIR",
        help="lite, with --backend onnxruntime: an `ahstream export --out DIR` of these weights "
        "(default: export the shipped weights in memory at start)",
    )
    parser.add_argument(
        "--engine-dir",
        metavar="DIR",
        help="full, with --backend onnxruntime|tensorrt (required there): an `ahstream export "
        "--profile full --weights-dir CKPT --out DIR` of the --weights-dir checkpoint; "
        "TensorRT engines are cached in DIR/engines",
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="full: where the encoders and Whisper run (default auto: cuda when torch sees a "
        "GPU, else cpu; with --backend onnxruntime the graphs run on cuda only if onnxruntime "
        "has its CUDA provider, onnxruntime-gpu); the lite profile runs on the CPU",
    )
    parser.add_argument(
        "--asr-model",
        metavar="NAME|PATH",
        help="full: Whisper for the transcript, a faster-whisper size name (small, large-v3, "
        "...; fetched into the hub cache if not there), a hub id or a local CTranslate2 "
        "directory (default: the bundled tiny.en); float16 on cuda, int8 on cpu",
    )


def _add_full_device_arg(parser: argparse.ArgumentParser) -> None:
    """--device of full-profile `train` and `evaluate`: the choices of serve/analyze."""
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="full: where the encoders run (default auto: cuda when torch sees a GPU, else cpu)",
    )


def _add_profile_args(parser: argparse.ArgumentParser) -> None:
    """--profile, --weights-dir, --face-crop and --analysis-hz of `serve` and `analyze`."""
    parser.add_argument(
        "--profile",
        default="lite",
        choices=["lite", "full"],
        help="model profile (default %(default)s)",
    )
    parser.add_argument(
        "--weights-dir",
        metavar="DIR",
        help="full: a directory written by `ahstream train --profile full` (required); "
        "lite: text and TCN weights (default: the shipped ones)",
    )
    parser.add_argument(
        "--face-crop",
        default="mesh",
        choices=["mesh", "centre"],
        help="full: face crops from the face mesh's landmarks (default), or the centred "
        "square of the frame for media that are face crops already",
    )
    parser.add_argument(
        "--analysis-hz",
        type=float,
        default=None,
        help="analysis ticks (frame events) per media second, 1 to 50 (lite default 10; "
        "full: the rate its weights were trained at, which is also the default)",
    )


def _profile_models(args: argparse.Namespace, **options: Any) -> Any:
    """The models of --profile with --weights-dir/--face-crop; sets ``args.analysis_hz``
    to the rate they need. Exits with a message when they cannot be loaded, or the rate
    given differs from the one the weights need, or that one is out of a session's range."""
    extra: dict[str, Any] = {} if args.weights_dir is None else {"weights_dir": args.weights_dir}
    if args.profile == "full":
        extra["face_crop"] = args.face_crop
    from models.export import ExportError
    from models.tensorrt import EngineMismatch, TensorRTUnavailable

    try:
        models = _models(args.profile, **options, **extra)
    except (ValueError, FileNotFoundError, ExportError, TensorRTUnavailable, EngineMismatch) as exc:
        # FullProfileError is a ValueError: missing weight files, another format, an export
        # that does not match, an ASR model that cannot be found or fetched
        raise SystemExit(f"ahstream {args.command}: {exc}") from exc
    except RuntimeError as exc:  # e.g. CTranslate2 or torch without CUDA for --device cuda
        log.debug("loading the models failed", exc_info=True)
        raise SystemExit(f"ahstream {args.command}: cannot load the models: {exc}") from exc
    need = models.analysis_hz
    if need is not None and args.analysis_hz is not None and abs(args.analysis_hz - need) > 1e-9:
        raise SystemExit(
            f"ahstream {args.command}: --analysis-hz {args.analysis_hz:g} differs from the "
            f"{need:g} Hz the {'--weights-dir' if args.profile == 'full' else 'published'} TCN "
            "was trained at (leave it out)"
        )
    args.analysis_hz = need or (10.0 if args.analysis_hz is None else args.analysis_hz)
    low, high = ANALYSIS_HZ_RANGE
    if not low <= args.analysis_hz <= high:
        raise SystemExit(
            f"ahstream {args.command}: the --weights-dir TCN was trained at "
            f"{args.analysis_hz:g} Hz; sessions run at {low:g} to {high:g} Hz"
        )
    return models


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _serve_options_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the TLS, weights, recording and limit options of `serve` (None:
    nothing)."""
    import ssl

    from stream.serving import tls_context

    if bool(args.tls_cert) != bool(args.tls_key):
        return "--tls-cert and --tls-key go together"
    problem = _weights_dir_problem(args) or _full_options_problem(args)
    if problem:
        return problem
    if args.tls_cert:
        try:
            tls_context(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            return f"cannot use the TLS certificate/key: {exc}"
    problem = _ice_problem(args)
    if problem:
        return problem
    if args.batch_max < 1 or not 0 <= args.batch_wait_ms <= 1000:
        return "--batch-max must be >= 1 and --batch-wait-ms between 0 and 1000"
    if min(args.max_width, args.max_height) < 16 or not args.max_fps > 0 or args.ws_max_msg < 64:
        return "--max-width/--max-height must be >= 16, --max-fps > 0, --ws-max-msg >= 64"
    if args.record:
        try:
            Path(args.record).mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            return f"cannot create the --record directory: {exc}"
        if not os.access(args.record, os.W_OK):
            return f"the --record directory {args.record} is not writable"
    return None


def _ice_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the ICE server URLs (None: nothing). They are the --ice-server
    options, else the whitespace-separated URLs of $AHSTREAM_ICE_SERVERS; ``args.ice_server``
    is set to the ones used."""
    from stream.serving import ice_configuration

    source = "--ice-server"
    if not args.ice_server and os.environ.get(ICE_SERVERS_ENV, "").strip():
        args.ice_server, source = os.environ[ICE_SERVERS_ENV].split(), ICE_SERVERS_ENV
    try:
        ice_configuration(args.ice_server or ())
    except ValueError as exc:
        return f"{source}: {exc}"
    return None


def _add_ice_server_arg(parser: argparse.ArgumentParser, who: str, peer: str) -> None:
    """--ice-server of `serve` and `send` (``who`` gathers candidates, ``peer`` connects)."""
    parser.add_argument(
        "--ice-server",
        action="append",
        metavar="URL",
        help=f"a STUN or TURN server {who} gathers ICE candidates with, for when {peer} "
        "cannot reach this host's own addresses (NAT): stun:HOST[:PORT], "
        "turn:USER:PASSWORD@HOST[:PORT][?transport=udp|tcp] or turns:USER:PASSWORD@HOST[:PORT] "
        "(TLS); user and password percent-encoded. Give it twice for one STUN and one TURN "
        "server (aiortc uses at most one of each). A password on the command line is "
        f"visible in the process list: ${ICE_SERVERS_ENV} (URLs separated by spaces) is "
        "read instead when the option is absent. Default: none: this host's own addresses "
        "only (enough on one network), and no request to any STUN server",
    )


def _listen_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (None: it could a moment ago). The server
    binds only once the models are loaded; this binds as asyncio's create_server does
    (every address of ``host``, SO_REUSEADDR) to fail before that."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in dict.fromkeys(infos):
            with socket.socket(family, kind, proto) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind(address)
                s.listen()
    except OSError as exc:
        return _cannot_listen(host, port, exc)
    return None


def _cannot_listen(host: str, port: int, exc: OSError) -> str:
    return f"cannot listen on {host}:{port}: {_reason(exc)}"


def cmd_serve(args: argparse.Namespace) -> int:
    from stream.auth import ENV_TOKENS, TokenFileError, load_tokens
    from stream.serving import EXIT_CANNOT_LISTEN

    try:
        tokens = load_tokens(args.token_file)
    except TokenFileError as exc:
        print(f"ahstream serve: {exc}", file=sys.stderr)
        return 2
    if not tokens and args.host not in LOOPBACK_HOSTS:
        print(
            f"ahstream serve: refusing to bind {args.host} without authentication; "
            f"configure service tokens with --token-file FILE or {ENV_TOKENS}, "
            "or bind 127.0.0.1",
            file=sys.stderr,
        )
        return 2
    problem = _serve_options_problem(args)
    if problem:
        print(f"ahstream serve: {problem}", file=sys.stderr)
        return 2
    problem = _listen_problem(args.host, args.port)
    if problem:
        print(f"ahstream serve: {problem}", file=sys.stderr)
        return EXIT_CANNOT_LISTEN
    processes = serve_processes(args.processes)
    if processes > 1:
        return _serve_front(args, processes, tokens)
    from stream.serving import limit_malloc_arenas

    limit_malloc_arenas()  # before any thread: per-session memory (README, Performance)
    from stream.ingest import MediaLimits
    from stream.server import ASR_NICE, ASR_WORKERS, ServerConfig, run_server

    # Sessions run side by side: two Whisper decodes at once, one thread each, at a lower
    # CPU priority than frames (a live ASR that falls behind skips ahead; frames must not).
    models = _profile_models(
        args,
        cpu_threads=1,
        asr_workers=ASR_WORKERS,
        asr_nice=ASR_NICE,
        **_backend_options(args),
    )
    config = ServerConfig(
        host=args.host,
        port=args.port,
        profile=args.profile,
        analysis_hz=args.analysis_hz,
        idle_timeout_s=args.idle_timeout,
        max_sessions=args.max_sessions,
        max_duration_s=args.max_duration,
        tokens=tuple(tokens),
        limits=MediaLimits(
            max_width=args.max_width, max_height=args.max_height, max_fps=args.max_fps
        ),
        ws_max_msg=args.ws_max_msg,
        record_dir=args.record,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        batch_max=args.batch_max,
        batch_wait_ms=args.batch_wait_ms,
        ice_servers=tuple(args.ice_server or ()),
        asr_skip=not args.no_asr_skip,
    )
    worker = os.environ.get("AHSTREAM_WORKER")
    if worker is None:
        _announce(args, len(tokens), processes=1)
    else:
        print(
            f"ahstream: worker process {worker} (pid {os.getpid()}) ready on "
            f"{args.host}:{args.port}, behind the front",
            file=sys.stderr,
            flush=True,
        )
    try:
        run_server(models, config)
    except OSError as exc:  # the port was taken after _listen_problem looked
        print(f"ahstream serve: {_cannot_listen(args.host, args.port, exc)}", file=sys.stderr)
        return EXIT_CANNOT_LISTEN
    return 0


def _announce(args: argparse.Namespace, n_tokens: int, processes: int) -> None:
    """What `serve` tells its user at start: auth, address, recording."""
    if n_tokens:
        print(f"ahstream: bearer-token auth on ({n_tokens} service tokens)", file=sys.stderr)
    else:
        print(
            "ahstream: no tokens configured: running WITHOUT authentication, "
            "on localhost only (use --token-file to serve other hosts)",
            file=sys.stderr,
        )
    workers = f", {processes} worker processes" if processes > 1 else ""
    print(
        f"ahstream: serving {'https' if args.tls_cert else 'http'}://{args.host}:{args.port}/ "
        f"(profile {args.profile}{workers})",
        file=sys.stderr,
        flush=True,
    )
    if args.record:
        print(f"ahstream: recording every session under {args.record} (--record)", file=sys.stderr)


MAX_AUTO_PROCESSES = 4


def _processes(value: str) -> int | str:
    """`--processes`: a positive count or 'auto'."""
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number of processes or 'auto'") from None
    if n < 1:
        raise argparse.ArgumentTypeError("at least one process")
    return n


def serve_processes(value: int | str) -> int:
    """How many worker processes `serve` runs (1: no front, today's single process)."""
    if os.environ.get("AHSTREAM_WORKER") is not None:
        return 1  # a worker of a front never starts workers of its own
    if value == "auto":
        return max(1, min(os.cpu_count() or 1, MAX_AUTO_PROCESSES))
    return int(value)


FRONT_ONLY = ("host", "port", "processes", "tls_cert", "tls_key")


def worker_argv(args: argparse.Namespace) -> list[str]:
    """The `serve` command line of a worker: every option the user set, except the ones the
    front keeps (address, TLS, processes) and the ICE servers (passed in the environment)."""
    argv = ["--log-level", args.log_level, "serve"]
    for action in args.serve_parser._actions:
        if not action.option_strings or action.dest in FRONT_ONLY or action.dest == "help":
            continue
        if action.dest == "ice_server":  # credentials: passed in the environment instead
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default:
            continue
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            argv.append(flag)
        elif isinstance(action, argparse._AppendAction):
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return argv


def _serve_front(args: argparse.Namespace, processes: int, tokens: list[str]) -> int:
    """Run `serve` as a front over ``processes`` worker servers (stream.front)."""
    from stream.front import run_front
    from stream.serving import EXIT_CANNOT_LISTEN, tls_context

    ssl_context = tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    # The workers inherit the ICE servers (TURN passwords) in their environment, so that
    # they are not in the process list; worker_argv leaves them out.
    os.environ[ICE_SERVERS_ENV] = " ".join(args.ice_server or ())
    _announce(args, len(tokens), processes)
    try:
        run_front(
            worker_argv(args),
            processes,
            args.host,
            args.port,
            ssl_context=ssl_context,
            ws_max_msg=args.ws_max_msg,
            max_sessions=args.max_sessions,
            tokens=tokens,
        )
    except OSError as exc:  # the port was taken after _listen_problem looked
        print(f"ahstream serve: {_cannot_listen(args.host, args.port, exc)}", file=sys.stderr)
        return EXIT_CANNOT_LISTEN
    except RuntimeError as exc:  # a worker did not start; its own messages came before
        print(f"ahstream serve: {exc}", file=sys.stderr)
        return 1
    return 0


async def _analyze_one(
    path: Path, models: Any, out: Any, args: argparse.Namespace, executor: Any
) -> dict[str, Any]:
    from stream.publisher import Publisher
    from stream.replay import replay_file
    from stream.session import Session

    publisher = Publisher(path.stem)
    if out is not None:
        publisher.listeners.append(lambda e: out.write(e.to_json() + "\n"))
    collected: list[dict[str, Any]] | None = [] if args.report else None
    if collected is not None:
        publisher.listeners.append(lambda e: collected.append(e.to_dict()))
    bar = None if args.json else _media_progress(path)
    if bar is not None:
        publisher.listeners.append(lambda e: _advance(bar, e))
    session = Session(
        path.stem,
        models,
        publisher,
        analysis_hz=args.analysis_hz,
        context=args.context,
        executor=executor,
        asr_hop_s=args.asr_hop,
        # The full profile's audio windows end at the tick, as in training: a file session
        # waits for that audio (a live one takes what has arrived by then).
        **({"audio_delay_s": 0.0} if getattr(models, "full", None) is not None else {}),
    )
    session.start()
    started = time.perf_counter()
    try:
        await replay_file(path, session, realtime=args.realtime)
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - started
    result = {
        "file": str(path),
        "duration": session.media_end,
        "wall_s": round(wall, 3),  # decoding to final events (models loaded once before)
        "x_realtime": round(session.media_end / wall, 2) if wall > 0 else None,
        "decision": session.decision,
        "transcript": " ".join(w.w.strip() for w in session.asr.committed_words),
    }
    if collected is not None:
        from clients.report import render_report

        png, page = render_report(collected, args.report, path.stem)
        result["report"] = {"png": str(png), "html": str(page)}
    return result


def _media_progress(path: Path) -> Any:
    """A tqdm bar on stderr over the media seconds of ``path`` (total unknown: None)."""
    import av
    from tqdm import tqdm

    total = None
    try:
        with av.open(str(path)) as container:
            if container.duration:
                total = round(container.duration / 1_000_000, 1)
    except (av.error.FFmpegError, OSError):
        pass
    return tqdm(
        total=total,
        desc=path.name,
        unit="s",
        file=sys.stderr,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s of media "
        "[{elapsed}<{remaining}]"
        if total
        else "{desc}: {n:.1f} s of media [{elapsed}]",
    )


def _advance(bar: Any, event: Any) -> None:
    """Move the progress bar to the media time of an analysis tick."""
    t = getattr(event, "t", None)
    if event.type == "frame" and t is not None and t > bar.n:
        bar.update(min(t, bar.total or t) - bar.n)


def _output_is_input_problem(files: list[Path], args: argparse.Namespace) -> str | None:
    """An output file of `analyze` (--out, --out-dir or --report files) that is one of the
    inputs: it would be overwritten before it is read (None: none is)."""
    outputs: list[tuple[str, Path]] = []
    if args.out:
        outputs.append(("--out", Path(args.out)))
    for path in files:
        if args.out_dir:
            outputs.append(("--out-dir", Path(args.out_dir) / f"{path.stem}.jsonl"))
        if args.report:
            outputs += [
                ("--report", Path(args.report) / f"{path.stem}{x}") for x in (".png", ".html")
            ]
    for flag, target in outputs:
        for path in files:
            if _same_file(str(target), str(path)):
                return f"{flag} would write {target}, which is the input {path}"
    return None


def _same_stem_problem(files: list[Path], args: argparse.Namespace) -> str | None:
    """Two files whose outputs (``DIR/<stem>.jsonl``, ``.png``, ``.html``) would overwrite
    each other under --out-dir or --report (None: no two)."""
    flags = [f for f, d in (("--out-dir", args.out_dir), ("--report", args.report)) if d]
    if not flags:
        return None
    seen: dict[str, Path] = {}
    for path in files:
        first = seen.setdefault(path.stem, path)
        if first is not path:
            return (
                f"{first} and {path} would write the same {path.stem}.* under "
                f"{' and '.join(flags)} (files are named by stem); rename one or run them "
                "separately"
            )
    return None


def cmd_analyze(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from stream.record import create_private
    from stream.replay import MediaFileError

    files = [Path(f) for f in args.files]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        print(f"ahstream analyze: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.out and len(files) > 1:
        print("ahstream analyze: --out takes one file; use --out-dir for several", file=sys.stderr)
        return 2
    problem = _same_stem_problem(files, args) or _output_is_input_problem(files, args)
    if problem:
        print(f"ahstream analyze: {problem}", file=sys.stderr)
        return 2
    problem = (
        _weights_dir_problem(args)
        or _full_options_problem(args)
        or (args.out and _file_problem("--out", args.out))
        or (args.out_dir and _dir_problem("--out-dir", args.out_dir))
        or (args.report and _dir_problem("--report", args.report))
    )
    if problem:
        print(f"ahstream analyze: {problem}", file=sys.stderr)
        return 2
    models = _profile_models(args, **_backend_options(args))
    if models.face_pool is not None:
        models.face_pool.fill()  # the face graph builds while the file opens
        models.face_pool.refill = len(files) > 1  # a replacement only if another file comes
    results = []

    async def run() -> None:
        with ThreadPoolExecutor(2, thread_name_prefix="infer") as executor:
            for path in files:
                if args.out_dir:
                    target = Path(args.out_dir) / f"{path.stem}.jsonl"
                else:
                    target = Path(args.out) if args.out else None
                out = create_private(target) if target else None
                if out is None and not args.json:
                    out = sys.stdout
                try:
                    result = await _analyze_one(path, models, out, args, executor)
                except MediaFileError as exc:
                    print(f"ahstream analyze: {exc}", file=sys.stderr)
                    results.append({"file": str(path), "error": str(exc)})
                    continue
                finally:
                    if out is not None and out is not sys.stdout:
                        out.close()
                if result["decision"] is None:  # not one tick: nothing in it to analyse
                    result["error"] = f"{path}: no decision: no audio or video was analysed"
                    print(f"ahstream analyze: {result['error']}", file=sys.stderr)
                results.append(result)

    asyncio.run(run())
    for r in results:
        if "error" not in r and args.out is None and args.out_dir is None and not args.json:
            continue
        d = r.get("decision") or {}
        if not args.json and "error" not in r:
            print(
                f"{r['file']}: {'A/H' if d.get('label') else 'no A/H'} "
                f"(p={d.get('p', float('nan')):.3f}, {r['duration']:.1f} s of media "
                f"in {r['wall_s']:.1f} s, {r['x_realtime']}x real time)",
                file=sys.stderr,
            )
            if "report" in r:
                print(f"  report: {r['report']['html']}", file=sys.stderr)
    if args.json:
        print(json.dumps({"results": results}))
    return 1 if any("error" in r for r in results) else 0


def cmd_report(args: argparse.Namespace) -> int:
    from clients.report import load_events, render_report

    for name in args.events:
        problem = _input_problem(name)
        if problem:
            print(f"ahstream report: {problem}", file=sys.stderr)
            return 2
    seen: dict[str, Path] = {}
    for path in map(Path, args.events):
        first = seen.setdefault(path.stem, path)
        if first is not path:
            print(
                f"ahstream report: {first} and {path} would write the same {path.stem}.png "
                f"and .html under {args.out} (reports are named by stem); rename one or run "
                "them separately",
                file=sys.stderr,
            )
            return 2
    status = 0
    for name in args.events:
        path = Path(name)
        try:
            png, page = render_report(load_events(path), args.out, path.stem)
        except (OSError, ValueError) as exc:
            problem = str(exc)
        except KeyError as exc:  # valid JSON, but not an event of the protocol
            problem = f"an event lacks the field {exc}"
        except (TypeError, AttributeError) as exc:
            problem = f"an event has a malformed field: {exc}"
        else:
            print(f"{path}: {png} {page}", file=sys.stderr)
            continue
        print(f"ahstream report: {path}: {problem}", file=sys.stderr)
        status = 1
    return status


#: `session.ended` reasons that mean the server could not finish the call's analysis.
SEND_FAILED = frozenset({"analysis failed", "internal error", "server shutdown"})


def cmd_send(args: argparse.Namespace) -> int:
    from clients.send import SendError, send_file

    problem = (
        _input_problem(args.file)
        or (args.events and _file_problem("--events", args.events))
        or _ice_problem(args)
    )
    if not problem and args.events and _same_file(args.events, args.file):
        problem = f"--events {args.events} is the file being sent: it would be overwritten"
    if not problem and "://" not in args.url:
        problem = f"--url {args.url}: give the scheme, e.g. http://{args.url}"
    if problem:
        print(f"ahstream send: {problem}", file=sys.stderr)
        return 2

    def show(event: dict[str, Any]) -> None:
        if args.quiet:
            return
        kind = event.get("type")
        if kind == "transcript" and event.get("final"):
            print(f"[{event['t0']:7.2f}] {event['text']}", file=sys.stderr)
        elif kind == "video" and event.get("final"):
            print(
                f"final decision: {'A/H' if event['label'] else 'no A/H'} "
                f"(p={event['p']:.3f}, threshold {event['threshold']:.3f})",
                file=sys.stderr,
            )
        elif kind == "error":
            print(f"error: {event.get('code')}: {event.get('message')}", file=sys.stderr)

    def announce(session_id: str, read_token: str | None) -> None:
        if args.quiet:
            return
        watch = f"{args.url.rstrip('/')}/?session={session_id}"
        token = f"; its read token: {read_token}" if read_token else ""
        print(f"session {session_id} (watch it at {watch}{token})", file=sys.stderr)

    try:
        events = asyncio.run(
            send_file(
                args.file,
                args.url,
                events_out=args.events,
                token=args.token,
                context=args.context,
                on_event=show,
                on_session=announce,
                ice_servers=args.ice_server or (),
            )
        )
    except SendError as exc:
        print(f"ahstream send: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # send_file has ended the session it created (DELETE)
        print("ahstream send: interrupted", file=sys.stderr)
        return 130
    ended = [e for e in events if e.get("type") == "session.ended"]
    summary = {
        "events": len(events),
        "session_ended": bool(ended),
        "decision": ended[-1].get("decision") if ended else None,
    }
    print(json.dumps(summary))
    if not ended:
        print("ahstream send: the event stream ended before session.ended", file=sys.stderr)
        return 1
    reason = ended[-1].get("reason")
    if reason in SEND_FAILED or summary["decision"] is None:
        print(
            f"ahstream send: the session ended ({reason}) "
            + ("without a decision" if summary["decision"] is None else "after a failure"),
            file=sys.stderr,
        )
        return 1
    if reason != "deleted":  # the sender ends its call with DELETE once the file is sent
        duration = ended[-1].get("duration")
        print(
            f"ahstream send: the server ended the session ({reason}) before the file was "
            f"sent; the decision covers its first {duration} s",
            file=sys.stderr,
        )
        return 1
    return 0


def _input_problem(name: str) -> str | None:
    """An input file that is missing or a directory (None: a file)."""
    path = Path(name)
    if path.is_dir():
        return f"{name} is a directory, not a file"
    if not path.is_file():
        return f"no such file: {name}"
    return None


def _same_file(a: str, b: str) -> bool:
    """Whether two paths name the same existing file."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def cmd_listen(args: argparse.Namespace) -> int:
    import aiohttp

    from clients.listen import ListenError, listen, redact

    try:
        ended = asyncio.run(listen(args.url, token=args.token))
    except aiohttp.InvalidURL as exc:  # the URL may hold ?token=: shown without its query
        why = f" ({exc.description})" if exc.description else ""
        print(f"ahstream listen: invalid URL: {redact(str(exc.url))}{why}", file=sys.stderr)
        return 2
    except ListenError as exc:
        print(f"ahstream listen: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # writing stdout (a closed pipe)
        print(f"ahstream listen: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ahstream listen: interrupted", file=sys.stderr)
        return 130
    if not ended:
        print("ahstream listen: the event stream ended before session.ended", file=sys.stderr)
        return 1
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if args.profile == "full":
        return _train_full(args)
    if not args.split_dir:
        print("ahstream train: --profile lite needs --split-dir DIR", file=sys.stderr)
        return 2
    split_dir = Path(args.split_dir)
    for name in ("train.txt", "val.txt"):
        if not (split_dir / name).is_file():
            print(f"ahstream train: {split_dir / name} not found", file=sys.stderr)
            return 2
    out_dir = (
        Path(args.out_dir)
        if args.out_dir
        else Path(__file__).resolve().parents[1] / "models" / "weights"
    )
    import shutil
    import tempfile

    from models.bah import BahFormatError
    from models.text_ah import TextAHModel
    from models.train_tcn import train_tcn_model
    from models.train_text import train_text_model

    started = time.perf_counter()
    progress = not args.json
    # Train into a staging directory and move the finished pair of models into place
    # together: an interrupted or failed run leaves the old weights as they were, and a
    # server never loads a new text model beside the old decision thresholds.
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".train-", dir=out_dir))
    except OSError as exc:
        print(f"ahstream train: cannot write to {out_dir}: {exc}", file=sys.stderr)
        return 2
    try:
        text = train_text_model(split_dir, stage, seed=args.seed, progress=progress)
        tcn = train_tcn_model(
            split_dir, stage, TextAHModel.load(stage), seed=args.seed, progress=progress
        )
        for f in sorted(stage.iterdir()):
            os.replace(f, out_dir / f.name)
    except (BahFormatError, ValueError) as exc:
        print(f"ahstream train: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    text["out_dir"] = tcn["out_dir"] = str(out_dir)
    result = {
        "text": text,
        "tcn": tcn,
        "out_dir": str(out_dir),
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))
    return 0


def _full_device(command: str, device: str) -> str | None:
    """--device of full-profile train/evaluate resolved as serve/analyze do ("cpu" or
    "cuda"); None after a one-line message when it cannot be used here."""
    from models.profile import resolve_device

    try:
        return resolve_device(device)
    except ValueError as exc:
        print(f"ahstream {command}: --device: {exc}", file=sys.stderr)
        return None


def _full_profile_call(command: str, call: Any) -> tuple[int, dict[str, Any] | None]:
    """Run a full-profile train/evaluate call; errors become (exit code, None) and a message."""
    from models.bah_layout import BahLayoutError
    from models.train_full import FullProfileError

    try:
        return 0, call()
    except (FullProfileError, FileNotFoundError) as exc:  # missing split, weights or model
        print(f"ahstream {command}: {exc}", file=sys.stderr)
        return 2, None
    except BahLayoutError as exc:  # a malformed file of the layout
        print(f"ahstream {command}: {exc}", file=sys.stderr)
        return 1, None
    except OSError as exc:  # e.g. a feature cache that cannot be written
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"ahstream {command}: {where}{_reason(exc)}", file=sys.stderr)
        return 1, None
    except RuntimeError as exc:  # e.g. torch failing on the device (no driver, out of memory)
        log.debug("%s failed", command, exc_info=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"ahstream {command}: {first}", file=sys.stderr)
        return 1, None


def _train_full(args: argparse.Namespace) -> int:
    """`ahstream train --profile full --bah-root DIR --out-dir DIR`."""
    if not args.bah_root or not args.out_dir:
        print(
            "ahstream train: --profile full needs --bah-root DIR and --out-dir DIR", file=sys.stderr
        )
        return 2
    if not Path(args.bah_root).is_dir():
        print(f"ahstream train: {args.bah_root}: not a BAH dataset root", file=sys.stderr)
        return 2
    device = _full_device("train", args.device)
    if device is None:
        return 2
    from models.bah_features import TickConfig
    from models.train_full import FullTrainConfig, train_full

    chosen = {"video": args.video_model, "audio": args.audio_model, "text": args.text_model}
    models = {k: v for k, v in chosen.items() if v}
    ticks = TickConfig(hz=args.tick_hz, audio_window_s=args.audio_window)
    config = FullTrainConfig(epochs=args.epochs, seed=args.seed, ticks=ticks)
    code, result = _full_profile_call(
        "train",
        lambda: train_full(
            args.bah_root,
            args.out_dir,
            models=models,
            config=config,
            cache_dir=args.cache_dir,
            progress=not args.json,
            device=device,
        ),
    )
    if result is not None:
        print(json.dumps(result))
    return code


def _evaluate_full(args: argparse.Namespace) -> int:
    """`ahstream evaluate --bah-root DIR --split val|test --weights-dir DIR [--submission CSV]`."""
    given = [f for f, v in (("--split-file", args.split_file),) if v]
    given += ["--context-from-question"] if args.context_from_question else []
    if given:
        print(
            f"ahstream evaluate: {' and '.join(given)}: only for the lite evaluation "
            "(--split-file FILE), not --bah-root",
            file=sys.stderr,
        )
        return 2
    args.split = args.split or "val"
    if not Path(args.bah_root).is_dir():
        print(f"ahstream evaluate: {args.bah_root}: not a BAH dataset root", file=sys.stderr)
        return 2
    if not args.weights_dir:
        print("ahstream evaluate: --bah-root needs --weights-dir DIR", file=sys.stderr)
        return 2
    problem = args.submission and _dir_problem("--submission", Path(args.submission).parent)
    if problem:
        print(f"ahstream evaluate: {problem}", file=sys.stderr)
        return 2
    device = _full_device("evaluate", args.device)
    if device is None:
        return 2
    from models.train_full import evaluate_full

    code, result = _full_profile_call(
        "evaluate",
        lambda: evaluate_full(
            args.bah_root,
            args.split,
            args.weights_dir,
            cache_dir=args.cache_dir,
            submission=args.submission,
            progress=not args.json,
            device=device,
        ),
    )
    if result is None:
        return code
    if args.json:
        print(json.dumps(result))
    else:
        fr, served = result["frame"], result["decision"]
        print(
            f"{args.split} video level (head, offline): {_metrics_line(result)} "
            f"threshold={result['threshold']:.3f}"
        )
        print(
            f"{args.split} video decision (served: TCN {served['method']}): "
            f"{_metrics_line(served)} threshold={served['threshold']:.3f}"
        )
        if fr.get("n"):
            print(f"{args.split} frame level: {_metrics_line(fr)} threshold={fr['threshold']:.3f}")
        if result["submission"]:
            print(f"submission: {result['submission']}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from models.bah import BahFormatError
    from stream.evaluate import evaluate_split

    if args.bah_root:
        return _evaluate_full(args)
    if not args.split_file:
        print(
            "ahstream evaluate: give --split-file FILE (lite) or --bah-root DIR (full)",
            file=sys.stderr,
        )
        return 2
    full_only = [
        flag
        for flag, given in (
            ("--split", args.split is not None),
            ("--submission", args.submission is not None),
            ("--cache-dir", args.cache_dir is not None),
            ("--device", args.device != "auto"),
        )
        if given
    ]
    if full_only:
        print(
            f"ahstream evaluate: {' and '.join(full_only)}: only for the full evaluation "
            "(--bah-root DIR), not --split-file",
            file=sys.stderr,
        )
        return 2
    if not Path(args.split_file).is_file():
        print(f"ahstream evaluate: no such file: {args.split_file}", file=sys.stderr)
        return 2
    problem = _weights_dir_problem(args)
    models = None
    if args.weights_dir and problem is None:
        from models.profile import load_models

        try:
            models = load_models(weights_dir=args.weights_dir, asr=False, face=False)
        except (FileNotFoundError, ValueError) as exc:  # missing weight files, another format
            problem = str(exc)
    if problem:
        print(f"ahstream evaluate: {problem}", file=sys.stderr)
        return 2
    try:
        result = evaluate_split(
            args.split_file,
            context_from_question=args.context_from_question,
            models=models,
            progress=not args.json,
        )
    except (BahFormatError, ValueError) as exc:
        print(f"ahstream evaluate: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        early = ", ".join(f"{k} %: {v['macro_f1']:.4f}" for k, v in result["early"].items())
        print(
            f"{_metrics_line(result)} threshold={result['threshold']:.3f} "
            f"[{result['source']}, {result['method']}]\nearly macro F1: {early}"
        )
    return 0


def _metrics_line(result: dict[str, Any]) -> str:
    """One human-readable line of the official metrics."""
    return (
        f"n={result['n']} macro F1={result['macro_f1']:.4f} "
        f"(A/H {result['f1_pos']:.4f}, no A/H {result['f1_neg']:.4f}) AP={result['ap']:.4f}"
    )


def cmd_score(args: argparse.Namespace) -> int:
    from models.bah import BahFormatError
    from models.submission import SubmissionError, score_submission

    for f in (args.predictions, args.split_file):
        if not Path(f).is_file():
            print(f"ahstream score: no such file: {f}", file=sys.stderr)
            return 2
    try:
        result = score_submission(args.predictions, args.split_file)
    except (SubmissionError, BahFormatError) as exc:
        print(f"ahstream score: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        print(_metrics_line(result))
    return 0


LIVE_ASR_HOP_S = 0.4  # stream.asr.ASROptions.hop_s
ANALYZE_ASR_HOP_S = 2.0  # files need no low latency: fewer, longer decodes, 5x less ASR work
RESULTS_DIR = Path("benchmarks") / "results"  # relative to where the command runs


def cmd_export(args: argparse.Namespace) -> int:
    from models.export import ExportError, export_full, export_lite

    try:
        if args.profile == "lite":
            if args.head or args.video_model or args.audio_model or args.text_model:
                print(
                    "ahstream export: --head/--video-model/--audio-model/--text-model are "
                    "full-profile options (--profile full)",
                    file=sys.stderr,
                )
                return 2
            manifest = export_lite(args.out, args.weights_dir, opset=args.opset, atol=args.atol)
        else:
            manifest = export_full(
                args.out,
                weights_dir=args.weights_dir,
                head=args.head,
                video_model=args.video_model,
                audio_model=args.audio_model,
                text_model=args.text_model,
                opset=args.opset,
                atol=args.atol,
            )
    except (ExportError, OSError, ValueError) as exc:
        print(f"ahstream export: {exc}", file=sys.stderr)
        return 1
    summary: dict[str, Any] = {
        "out": str(args.out),
        "manifest": str(Path(args.out) / "manifest.json"),
        "backend": args.backend,
        "opset": manifest["opset"],
        "models": {k: m["parity"]["max_abs_diff"] for k, m in manifest["models"].items()},
    }
    if args.backend == "tensorrt":
        from models.tensorrt import EngineBuildError, TensorRTUnavailable, build_export

        try:
            summary["engines"] = build_export(
                args.out, args.cache_dir, atol=args.trt_atol, rtol=args.trt_rtol
            )
        except (TensorRTUnavailable, EngineBuildError) as exc:  # the latter names the graph
            print(
                f"ahstream export: {exc} (the ONNX export in {args.out} is complete)",
                file=sys.stderr,
            )
            return 1
    if not args.json:
        for name, diff in summary["models"].items():
            print(f"{name}: ONNX Runtime vs source max |diff| {diff:.2g}", file=sys.stderr)
    print(json.dumps(summary))
    return 0


def _add_export_parser(sub: Any) -> None:
    x = sub.add_parser(
        "export",
        help="export the models to ONNX (and TensorRT engines), checked against their source",
        description="Export a profile's networks to ONNX (opset >= 17, dynamic batch; the TCN "
        "also as a step graph with explicit state) into --out with a manifest.json (files, "
        "sha256, inputs/outputs, source weights' hashes, parity). Every graph is run under "
        "ONNX Runtime and compared with its source; a difference above --atol fails. "
        "--backend tensorrt then builds one FP16 engine per graph (LayerNorm in FP32), cached "
        "per GPU and TensorRT version, each checked against ONNX Runtime.",
    )
    x.add_argument(
        "--profile",
        default="lite",
        choices=["lite", "full"],
        help="model profile (default %(default)s)",
    )
    x.add_argument(
        "--backend",
        default="onnx",
        choices=["onnx", "tensorrt"],
        help="onnx (default): graphs + manifest; tensorrt: also build and check an engine per "
        "graph (needs an NVIDIA GPU and `pip install '.[gpu]'`)",
    )
    x.add_argument("--out", required=True, metavar="DIR", help="write the graphs and manifest here")
    x.add_argument(
        "--weights-dir",
        metavar="DIR",
        help="lite: text and TCN weights (default: the shipped ones); full: a directory of "
        "`ahstream train --profile full`: its encoders, TCN (sequence and step graphs) and "
        "head, what `serve`/`analyze --profile full --backend onnxruntime|tensorrt "
        "--engine-dir DIR` run",
    )
    x.add_argument("--opset", type=int, default=17, help="ONNX opset, >= 17 (default %(default)s)")
    x.add_argument(
        "--atol",
        type=float,
        default=1e-4,
        help="largest ONNX-vs-source |diff| (default %(default)g)",
    )
    x.add_argument(
        "--head",
        metavar="CKPT",
        help="full: a ConflictAwareAH checkpoint (default with --weights-dir: its head); the "
        "graph takes raw embeddings (the checkpoint's standardisation is built in)",
    )
    hub = "hub id (fetched unless HF_HUB_OFFLINE is set) or local path"
    for kind, net in (("video", "VideoMAE"), ("audio", "HuBERT"), ("text", "RoBERTa")):
        x.add_argument(
            f"--{kind}-model",
            metavar="ID|PATH",
            help=f"full: {net} encoder, {hub} (default with --weights-dir: the one it names)",
        )
    x.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="tensorrt: engine cache (default: DIR/engines under --out)",
    )
    x.add_argument(
        "--trt-atol",
        type=float,
        default=1e-2,
        help="tensorrt: engine vs ONNX Runtime on the sample inputs, FP16: each output's "
        "largest |diff| may be ATOL + RTOL x its largest |value| (default %(default)g)",
    )
    x.add_argument(
        "--trt-rtol",
        type=float,
        default=2e-2,
        help="tensorrt: see --trt-atol (default %(default)g)",
    )
    x.add_argument(
        "--json",
        action="store_true",
        help="no per-model parity lines on stderr (the JSON summary is always printed, as the "
        "last line of stdout)",
    )
    x.set_defaults(func=cmd_export)


def _bench_problem(args: argparse.Namespace) -> str | None:
    """Missing inputs or an unusable output place of `bench` (None: none)."""
    inputs = ("wav", "file", "reference")
    for name in (getattr(args, dest, None) for dest in inputs):
        if name and not Path(name).is_file():
            return f"no such file: {name}"
    if any(n < 1 for n in getattr(args, "batch", None) or ()):
        return "--batch sizes must be >= 1"
    if getattr(args, "out", None):
        return _file_problem("--out", args.out)
    if not getattr(args, "no_save", True):
        return _future_dir_problem("--out-dir", args.out_dir)
    return None


def cmd_bench(args: argparse.Namespace) -> int:
    import av

    problem = _bench_problem(args)
    if problem:
        print(f"ahstream bench {args.bench}: {problem}", file=sys.stderr)
        return 2
    from benchmarks.output import mark_start

    mark_start()
    out_dir = None if getattr(args, "no_save", True) else args.out_dir
    reference_file = getattr(args, "reference", None)
    try:
        reference = Path(reference_file).read_text(encoding="utf-8") if reference_file else None
        if args.bench == "asr":
            from benchmarks.asr import plot_commit_latency, run_asr_bench
            from benchmarks.live import machine
            from benchmarks.output import run_info, write_json

            result = run_asr_bench(args.wav, reference, realtime=not args.fast)
            result["machine"] = machine()
            result["run"] = run_info()
            if args.out:
                write_json(result, args.out)
                plot_commit_latency(result, Path(args.out).with_suffix(".png"))
        elif args.bench == "latency":
            from benchmarks.latency import run_latency_bench

            result = run_latency_bench(args.file, url=args.url, out_dir=out_dir)
        elif args.bench == "throughput":
            from benchmarks.throughput import run_throughput_bench

            result = run_throughput_bench(
                args.file, max_sessions=args.max_sessions, out_dir=out_dir, reference=reference
            )
        elif args.bench == "encoders":
            from benchmarks.encoders import run_encoders_bench

            result = run_encoders_bench(args.file, batch_sizes=args.batch, out_dir=out_dir)
        else:
            return 2
    except (OSError, RuntimeError, ValueError, av.error.FFmpegError) as exc:
        print(f"ahstream bench {args.bench}: {exc}", file=sys.stderr)
        return 1
    from benchmarks.output import finite

    result = finite(result)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ahstream",
        description="Real-time ambivalence/hesitancy (A/H) recognition for live video calls.",
    )
    p.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=os.environ.get("AHSTREAM_LOG", "WARNING"),
        help="logging level, any case (default WARNING; env AHSTREAM_LOG)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the WHIP + websocket service")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8080, help="port, 1 to 65535 (default 8080)")
    _add_profile_args(s)
    _add_backend_args(s)
    s.add_argument(
        "--idle-timeout",
        type=float,
        default=3.0,
        help="end a session after this many seconds without media (default 3)",
    )
    s.add_argument(
        "--no-asr-skip",
        action="store_true",
        help="a session whose speech recognition falls more than a hop behind decodes every "
        "hop anyway (its transcript may then lag without bound); by default it skips to the "
        "newest audio (counted in status.asr_skipped). For measuring the words exactly",
    )
    s.add_argument(
        "--max-sessions",
        type=int,
        default=8,
        help="concurrent sessions in total, across all worker processes; more get 503 with "
        "Retry-After (default 8)",
    )
    s.add_argument(
        "--max-duration",
        type=float,
        default=3600.0,
        help="end a session after this many seconds of media (default 3600)",
    )
    s.add_argument(
        "--token-file",
        metavar="FILE",
        help="service bearer tokens, one per line (also env AHSTREAM_TOKENS, comma-separated); "
        "without tokens the service only binds localhost",
    )
    s.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS/WSS: certificate chain (PEM)")
    s.add_argument("--tls-key", metavar="FILE", help="private key of --tls-cert (PEM)")
    s.add_argument(
        "--record",
        metavar="DIR",
        help="opt-in: write each session's 16 kHz audio and events under DIR/<session-id>/ "
        "(default: nothing of a call is written anywhere)",
    )
    s.add_argument(
        "--max-width",
        type=int,
        default=1920,
        help="larger video frames are scaled down before analysis (default 1920)",
    )
    s.add_argument(
        "--max-height",
        type=int,
        default=1080,
        help="larger video frames are scaled down before analysis (default 1080)",
    )
    s.add_argument(
        "--max-fps",
        type=float,
        default=60.0,
        help="video frames above this rate (media time) are dropped and counted (default 60)",
    )
    s.add_argument(
        "--ws-max-msg",
        type=int,
        default=4096,
        help="largest websocket message a subscriber may send, bytes; larger closes it "
        "(default 4096)",
    )
    s.add_argument(
        "--batch-max",
        type=int,
        default=8,
        help="cross-session batching: at most this many items (faces) per model run, shared "
        "by all sessions of a process; 1 turns batching off (default 8)",
    )
    s.add_argument(
        "--batch-wait-ms",
        type=float,
        default=2.0,
        help="longest a model request is held for other sessions' requests to join its batch, "
        "and only while another session is known to be mid-tick (a lone session never waits). "
        "Longer waits form larger batches, which pays on a GPU and little on a CPU, at that "
        "cost in frame latency; 0 turns batching off (default 2)",
    )
    s.add_argument(
        "--processes",
        type=_processes,
        default="auto",
        metavar="N|auto",
        help="worker processes, each with its own models and event loop, behind one front on "
        "--host:--port; media goes straight to the worker of its session. aiortc's RTP "
        "stack runs in Python on one loop per process, so one process fills one core; "
        "'auto' (default) is one per CPU core, at most 4; each costs about 0.5 GB of memory",
    )
    _add_ice_server_arg(s, "each session's peer connection", "a publisher")
    s.set_defaults(func=cmd_serve, serve_parser=s)

    a = sub.add_parser("analyze", help="run the session on media files (offline)")
    a.add_argument("files", nargs="+", metavar="FILE", help="audio/video files")
    g = a.add_mutually_exclusive_group()
    g.add_argument(
        "--out",
        help="write the events of one file to this JSONL file (default: stdout, unless --json)",
    )
    g.add_argument("--out-dir", metavar="DIR", help="write DIR/<stem>.jsonl for each file")
    a.add_argument(
        "--realtime",
        action="store_true",
        help="feed at real-time pace (default: as fast as it can)",
    )
    a.add_argument("--context", help="the prompt the person is answering (optional)")
    _add_profile_args(a)
    _add_backend_args(a)
    a.add_argument(
        "--asr-hop",
        type=float,
        default=ANALYZE_ASR_HOP_S,
        help=f"seconds of audio between incremental ASR decodes, 0.1 to 5 "
        f"(default {ANALYZE_ASR_HOP_S}; "
        f"the live service uses {LIVE_ASR_HOP_S} for latency: give that to reproduce a live "
        "session step for step)",
    )
    a.add_argument(
        "--json",
        action="store_true",
        help="print a JSON summary as the last line (events only go to --out/--out-dir); "
        "no progress bar",
    )
    a.add_argument(
        "--report",
        metavar="DIR",
        help="also write DIR/<stem>.png (timeline) and DIR/<stem>.html (summary) per file",
    )
    a.set_defaults(func=cmd_analyze)

    rp = sub.add_parser("report", help="PNG timeline + HTML summary from saved events (JSONL)")
    rp.add_argument("events", nargs="+", metavar="EVENTS.jsonl", help="events of one session each")
    rp.add_argument("--out", required=True, metavar="DIR", help="write DIR/<stem>.png and .html")
    rp.set_defaults(func=cmd_report)

    se = sub.add_parser("send", help="publish a file over WHIP and record the events")
    se.add_argument("file", metavar="FILE", help="media file to publish (audio and/or video)")
    local = "http://127.0.0.1:8080"  # where `ahstream serve` listens by default
    se.add_argument("--url", default=local, help=f"server base URL (default {local}: serve's)")
    se.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV) or None,
        help=f"bearer token for the server (default: ${TOKEN_ENV}, which unlike this option "
        "is not visible in the process list)",
    )
    se.add_argument(
        "--events",
        help="write every event received to this JSONL file (opened once the call is accepted)",
    )
    se.add_argument("--context", help="the prompt the person is answering (optional)")
    se.add_argument(
        "--quiet",
        action="store_true",
        help="print only the summary JSON and failures: not the session id and read token, "
        "the committed transcript lines, the final decision or error events (stderr)",
    )
    _add_ice_server_arg(se, "the sender", "the server")
    se.set_defaults(func=cmd_send)

    li = sub.add_parser(
        "listen",
        help="print a session's events as JSON lines (exit 1 if the stream ends before "
        "session.ended)",
    )
    li.add_argument("url", help="http(s):// or ws(s)://HOST:PORT/sessions/<id>/events")
    li.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV) or None,
        help="bearer token: the session's read token or a service token (default: "
        f"${TOKEN_ENV}, which unlike this option is not visible in the process list)",
    )
    li.set_defaults(func=cmd_listen)

    t = sub.add_parser(
        "train", help="reproduce the shipped lite weights (text + TCN), or train the full profile"
    )
    t.add_argument(
        "--profile",
        default="lite",
        choices=["lite", "full"],
        help="lite: the text model and TCN from BAH transcripts; full: the encoders' "
        "embeddings and the conflict-aware head (default %(default)s)",
    )
    t.add_argument("--split-dir", help="lite: folder with BAH train.txt and val.txt")
    t.add_argument(
        "--out-dir",
        help="where to write weights (lite default: the package's weights; full: required)",
    )
    t.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    t.add_argument("--bah-root", metavar="DIR", help="full: BAH dataset root (distributed layout)")
    for kind, default in (
        ("video", "MCG-NJU/videomae-base"),
        ("audio", "facebook/hubert-base-ls960"),
        ("text", "SamLowe/roberta-base-go_emotions"),
    ):
        t.add_argument(f"--{kind}-model", help=f"full: hub id or local path (default {default})")
    t.add_argument(
        "--epochs", type=int, default=60, help="full: training epochs (default %(default)s)"
    )
    t.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="full: embedding cache (default OUT_DIR/feature-cache; reused across runs)",
    )
    _add_full_device_arg(t)
    t.add_argument(
        "--tick-hz",
        type=float,
        default=2.0,
        help="full: analysis ticks per second, 1 to 50; the weights are served at this rate "
        "(default %(default)g)",
    )
    t.add_argument(
        "--audio-window",
        type=float,
        default=2.0,
        metavar="S",
        help="full: seconds of audio each tick's voice embedding hears, up to 30 (the "
        "TensorRT engines' limit; default %(default)g)",
    )
    t.add_argument(
        "--json", action="store_true", help="no progress bar (the JSON metrics are always printed)"
    )
    t.set_defaults(func=cmd_train)

    ev = sub.add_parser(
        "evaluate", help="replay BAH transcripts through the streaming model and score it"
    )
    ev.add_argument(
        "--split-file",
        metavar="FILE",
        help="lite: BAH split file: video_id,label,transcript",
    )
    ev.add_argument("--bah-root", metavar="DIR", help="full: BAH dataset root; needs --weights-dir")
    ev.add_argument(
        "--split",
        choices=["train", "val", "test"],
        help="full: the split to evaluate (default val)",
    )
    ev.add_argument(
        "--submission", metavar="CSV", help="full: write the challenge submission of the split"
    )
    ev.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="full: embedding cache (default: the one `train` used)",
    )
    _add_full_device_arg(ev)
    ev.add_argument(
        "--context-from-question",
        action="store_true",
        help="give each answer the prompt of the question number in its video id as context",
    )
    ev.add_argument(
        "--weights-dir",
        metavar="DIR",
        help="lite: text and TCN weights (default: the shipped ones); full: `train` output",
    )
    ev.add_argument("--json", action="store_true", help="no progress bar; one JSON object")
    ev.set_defaults(func=cmd_evaluate)

    sc = sub.add_parser("score", help="score a challenge submission with the official metrics")
    sc.add_argument(
        "--predictions", required=True, metavar="CSV", help="video_id,p0,p1,pred lines, no header"
    )
    sc.add_argument(
        "--split-file",
        required=True,
        metavar="FILE",
        help="BAH split file: video_id,label,transcript",
    )
    sc.add_argument("--json", action="store_true", help="one JSON object as the last line")
    sc.set_defaults(func=cmd_score)

    _add_export_parser(sub)

    b = sub.add_parser("bench", help="benchmarks (JSON results)")
    bsub = b.add_subparsers(dest="bench", required=True, metavar="BENCH")
    bench_json_help = "print the result JSON on one line (default: indented)"
    ba = bsub.add_parser("asr", help="incremental ASR at real-time pace: WER, RTF, commit latency")
    ba.add_argument("wav", metavar="WAV")
    ba.add_argument("--reference", help="reference transcript (text file) for WER")
    ba.add_argument("--fast", action="store_true", help="feed as fast as possible, not real time")
    ba.add_argument(
        "--out", help="also write the result JSON here, and a commit-latency plot beside it (.png)"
    )
    ba.add_argument("--json", action="store_true", help=bench_json_help)
    results_help = "write JSON and PNG here (default ./benchmarks/results)"
    bl = bsub.add_parser(
        "latency",
        help="frame leaving a WHIP publisher -> its frame event at a subscriber (p50/p95/p99)",
    )
    bl.add_argument("file", metavar="FILE", help="audio/video clip, published in real time")
    bl.add_argument("--url", help="measure a running server (default: start one, lite profile)")
    bt = bsub.add_parser(
        "throughput", help="concurrent real-time sessions until lag grows or frames drop"
    )
    bt.add_argument("file", metavar="FILE", help="clip each session publishes in real time")
    bt.add_argument(
        "--max-sessions", type=int, default=8, help="stop after this many (default %(default)s)"
    )
    bt.add_argument("--reference", help="the clip's transcript (text file): WER per session")
    be = bsub.add_parser("encoders", help="ms per item of each model x backend x batch size")
    be.add_argument("file", nargs="?", metavar="FILE", help="video with a face for the face rows")
    be.add_argument(
        "--batch", type=int, nargs="+", default=[1, 4, 16], help="batch sizes (default 1 4 16)"
    )
    for sp in (bl, bt, be):
        sp.add_argument("--out-dir", default=str(RESULTS_DIR), help=results_help)
        sp.add_argument("--no-save", action="store_true", help="print only, write no files")
        sp.add_argument("--json", action="store_true", help=bench_json_help)
    b.set_defaults(func=cmd_bench)
    return p


def _may_use_hub(args: argparse.Namespace) -> bool:
    """Whether the command may fetch models from a hub: only the full profile's (encoders and
    Whisper by hub id or size name; DESIGN, "Profiles and models"). Every other command
    runs with HF_HUB_OFFLINE=1 unless the environment says otherwise."""
    if getattr(args, "profile", None) == "full":
        return True
    return args.command == "evaluate" and bool(getattr(args, "bah_root", None))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ahstream` command."""
    args = build_parser().parse_args(argv)
    if args.log_level not in LOG_LEVELS:  # argparse does not check a default (AHSTREAM_LOG)
        print(
            f"ahstream: AHSTREAM_LOG={args.log_level} is not one of {', '.join(LOG_LEVELS)}",
            file=sys.stderr,
        )
        return 2
    problem = _number_problem(args)
    if problem:
        command = " ".join(filter(None, (args.command, getattr(args, "bench", None))))
        print(f"ahstream {command}: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Their INFO and DEBUG lines carry callers' IP addresses, ICE passwords and whole SDPs.
    for name in WEBRTC_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(args.log_level)))
    if not _may_use_hub(args):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
