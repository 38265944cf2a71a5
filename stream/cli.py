"""The `ahstream` command line: serve, analyze, send, listen, evaluate, score, train, bench."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]

log = logging.getLogger("ahstream")


def _models(profile: str, **options: Any) -> Any:
    from models.profile import load_models

    return load_models(profile, **options)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _serve_options_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the TLS, recording and limit options of `serve` (None: nothing)."""
    import ssl

    from stream.server import tls_context

    if bool(args.tls_cert) != bool(args.tls_key):
        return "--tls-cert and --tls-key go together"
    if args.tls_cert:
        try:
            tls_context(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            return f"cannot use the TLS certificate/key: {exc}"
    if min(args.max_width, args.max_height) < 16 or args.max_fps <= 0 or args.ws_max_msg < 64:
        return "--max-width/--max-height must be >= 16, --max-fps > 0, --ws-max-msg >= 64"
    if args.record:
        try:
            Path(args.record).mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            return f"cannot create the --record directory: {exc}"
        if not os.access(args.record, os.W_OK):
            return f"the --record directory {args.record} is not writable"
    return None


def cmd_serve(args: argparse.Namespace) -> int:
    from stream.auth import ENV_TOKENS, TokenFileError, load_tokens
    from stream.ingest import MediaLimits
    from stream.server import ASR_NICE, ASR_WORKERS, ServerConfig, run_server

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
    )
    # Sessions run side by side: two Whisper decodes at once, one thread each, at a lower
    # CPU priority than frames (a live ASR that falls behind skips ahead; frames must not).
    models = _models(args.profile, cpu_threads=1, asr_workers=ASR_WORKERS, asr_nice=ASR_NICE)
    if tokens:
        print(f"ahstream: bearer-token auth on ({len(tokens)} service tokens)", file=sys.stderr)
    else:
        print(
            "ahstream: no tokens configured: running WITHOUT authentication, "
            "on localhost only (use --token-file to serve other hosts)",
            file=sys.stderr,
        )
    print(
        f"ahstream: serving {'https' if args.tls_cert else 'http'}://{args.host}:{args.port}/ "
        f"(profile {args.profile})",
        file=sys.stderr,
        flush=True,
    )
    if args.record:
        print(f"ahstream: recording every session under {args.record} (--record)", file=sys.stderr)
    run_server(models, config)
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


def cmd_analyze(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from stream.replay import MediaFileError

    files = [Path(f) for f in args.files]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        print(f"ahstream analyze: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.out and len(files) > 1:
        print("ahstream analyze: --out takes one file; use --out-dir for several", file=sys.stderr)
        return 2
    models = _models(args.profile)
    if models.face_pool is not None:
        models.face_pool.fill()  # the face graph builds while the file opens
        models.face_pool.refill = len(files) > 1  # a replacement only if another file comes
    results = []

    async def run() -> None:
        with ThreadPoolExecutor(2, thread_name_prefix="infer") as executor:
            for path in files:
                if args.out_dir:
                    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
                    target = Path(args.out_dir) / f"{path.stem}.jsonl"
                else:
                    target = Path(args.out) if args.out else None
                out = open(target, "w", encoding="utf-8") if target else None  # noqa: SIM115
                if out is None and not args.json:
                    out = sys.stdout
                try:
                    results.append(await _analyze_one(path, models, out, args, executor))
                except MediaFileError as exc:
                    print(f"ahstream analyze: {exc}", file=sys.stderr)
                    results.append({"file": str(path), "error": str(exc)})
                finally:
                    if out is not None and out is not sys.stdout:
                        out.close()

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

    status = 0
    for name in args.events:
        path = Path(name)
        try:
            png, page = render_report(load_events(path), args.out, path.stem)
        except (OSError, ValueError) as exc:
            print(f"ahstream report: {path}: {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"{path}: {png} {page}", file=sys.stderr)
    return status


def cmd_send(args: argparse.Namespace) -> int:
    from clients.send import SendError, send_file

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

    try:
        events = asyncio.run(
            send_file(
                args.file,
                args.url,
                events_out=args.events,
                token=args.token,
                context=args.context,
                on_event=show,
            )
        )
    except SendError as exc:
        print(f"ahstream send: {exc}", file=sys.stderr)
        return 1
    ended = [e for e in events if e.get("type") == "session.ended"]
    summary = {
        "events": len(events),
        "session_ended": bool(ended),
        "decision": ended[-1].get("decision") if ended else None,
    }
    print(json.dumps(summary))
    return 0 if ended else 1


def cmd_listen(args: argparse.Namespace) -> int:
    import aiohttp

    from clients.listen import listen

    try:
        asyncio.run(listen(args.url, token=args.token))
    except (aiohttp.ClientError, OSError) as exc:
        print(f"ahstream listen: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if args.profile != "lite":
        print("ahstream train: only --profile lite is available", file=sys.stderr)
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
    from models.text_ah import TextAHModel
    from models.train_tcn import train_tcn_model
    from models.train_text import train_text_model

    started = time.perf_counter()
    progress = not args.json
    text = train_text_model(split_dir, out_dir, seed=args.seed, progress=progress)
    tcn = train_tcn_model(
        split_dir, out_dir, TextAHModel.load(out_dir), seed=args.seed, progress=progress
    )
    result = {
        "text": text,
        "tcn": tcn,
        "out_dir": str(out_dir),
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from models.bah import BahFormatError
    from stream.evaluate import evaluate_split

    if not Path(args.split_file).is_file():
        print(f"ahstream evaluate: no such file: {args.split_file}", file=sys.stderr)
        return 2
    models = None
    if args.weights_dir:
        from models.profile import load_models

        models = load_models(weights_dir=args.weights_dir, asr=False, face=False)
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


def cmd_bench(args: argparse.Namespace) -> int:
    if args.bench == "asr":
        from benchmarks.asr import run_asr_bench

        reference = Path(args.reference).read_text(encoding="utf-8") if args.reference else None
        result = run_asr_bench(args.wav, reference, realtime=not args.fast)
        if args.out:
            from benchmarks.asr import plot_commit_latency

            Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
            plot_commit_latency(result, Path(args.out).with_suffix(".png"))
        print(json.dumps(result) if args.json else json.dumps(result, indent=2))
        return 0
    out_dir = None if args.no_save else args.out_dir
    try:
        if args.bench == "latency":
            from benchmarks.latency import run_latency_bench

            result = run_latency_bench(args.file, url=args.url, out_dir=out_dir)
        elif args.bench == "throughput":
            from benchmarks.throughput import run_throughput_bench

            reference = Path(args.reference).read_text() if args.reference else None
            result = run_throughput_bench(
                args.file, max_sessions=args.max_sessions, out_dir=out_dir, reference=reference
            )
        elif args.bench == "encoders":
            from benchmarks.encoders import run_encoders_bench

            result = run_encoders_bench(args.file, batch_sizes=args.batch, out_dir=out_dir)
        else:
            return 2
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"ahstream bench {args.bench}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ahstream",
        description="Real-time ambivalence/hesitancy (A/H) recognition for live video calls.",
    )
    p.add_argument(
        "--log-level",
        default=os.environ.get("AHSTREAM_LOG", "WARNING"),
        help="logging level (default WARNING; env AHSTREAM_LOG)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the WHIP + websocket service")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    s.add_argument("--profile", default="lite", choices=["lite"], help="model profile")
    s.add_argument(
        "--analysis-hz",
        type=float,
        default=10.0,
        help="analysis ticks (frame events) per media second (default 10)",
    )
    s.add_argument(
        "--idle-timeout",
        type=float,
        default=3.0,
        help="end a session after this many seconds without media (default 3)",
    )
    s.add_argument(
        "--max-sessions",
        type=int,
        default=8,
        help="concurrent sessions; more get 503 with Retry-After (default 8)",
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
    s.set_defaults(func=cmd_serve)

    a = sub.add_parser("analyze", help="run the session on media files (offline)")
    a.add_argument("files", nargs="+", metavar="FILE", help="audio/video files")
    g = a.add_mutually_exclusive_group()
    g.add_argument("--out", help="write the events of one file to this JSONL file")
    g.add_argument("--out-dir", help="write DIR/<stem>.jsonl for each file")
    a.add_argument("--realtime", action="store_true", help="feed at real-time pace")
    a.add_argument("--context", help="the prompt the person is answering (optional)")
    a.add_argument("--profile", default="lite", choices=["lite"], help="model profile")
    a.add_argument("--analysis-hz", type=float, default=10.0, help="analysis ticks per second")
    a.add_argument(
        "--asr-hop",
        type=float,
        default=ANALYZE_ASR_HOP_S,
        help=f"seconds of audio between incremental ASR decodes (default {ANALYZE_ASR_HOP_S}; "
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
    se.add_argument("file", metavar="FILE")
    se.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8080")
    se.add_argument("--token", help="bearer token for the server")
    se.add_argument("--events", help="write every event received to this JSONL file")
    se.add_argument("--context", help="the prompt the person is answering (optional)")
    se.add_argument("--quiet", action="store_true", help="do not print transcript lines")
    se.set_defaults(func=cmd_send)

    li = sub.add_parser("listen", help="print a session's events as JSON lines")
    li.add_argument("url", help="http(s):// or ws(s)://HOST:PORT/sessions/<id>/events")
    li.add_argument("--token", help="bearer token: the session's read token or a service token")
    li.set_defaults(func=cmd_listen)

    t = sub.add_parser("train", help="reproduce the shipped model weights (text + TCN)")
    t.add_argument("--profile", default="lite", choices=["lite"])
    t.add_argument("--split-dir", required=True, help="folder with BAH train.txt and val.txt")
    t.add_argument("--out-dir", help="where to write weights (default: the package's weights)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--json", action="store_true", help="no progress bar; JSON metrics only")
    t.set_defaults(func=cmd_train)

    ev = sub.add_parser(
        "evaluate", help="replay BAH transcripts through the streaming model and score it"
    )
    ev.add_argument(
        "--split-file",
        required=True,
        metavar="FILE",
        help="BAH split file: video_id,label,transcript",
    )
    ev.add_argument(
        "--context-from-question",
        action="store_true",
        help="give each answer the prompt of the question number in its video id as context",
    )
    ev.add_argument("--weights-dir", help="text and TCN weights (default: the shipped ones)")
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

    b = sub.add_parser("bench", help="benchmarks (JSON results)")
    bsub = b.add_subparsers(dest="bench", required=True, metavar="BENCH")
    ba = bsub.add_parser("asr", help="incremental ASR at real-time pace: WER, RTF, commit latency")
    ba.add_argument("wav", metavar="WAV")
    ba.add_argument("--reference", help="reference transcript (text file) for WER")
    ba.add_argument("--fast", action="store_true", help="feed as fast as possible, not real time")
    ba.add_argument(
        "--out", help="also write the result JSON here, and a commit-latency plot beside it (.png)"
    )
    ba.add_argument("--json", action="store_true", help="one JSON object as the last line")
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
    bt.add_argument("--max-sessions", type=int, default=8, help="stop after this many (8)")
    bt.add_argument("--reference", help="the clip's transcript (text file): WER per session")
    be = bsub.add_parser("encoders", help="ms per item of each model x backend x batch size")
    be.add_argument("file", nargs="?", metavar="FILE", help="video with a face for the face rows")
    be.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16], help="batch sizes (1 4 16)")
    for sp in (bl, bt, be):
        sp.add_argument("--out-dir", default=str(RESULTS_DIR), help=results_help)
        sp.add_argument("--no-save", action="store_true", help="print only, write no files")
        sp.add_argument("--json", action="store_true", help="one JSON object as the last line")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ahstream` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
