"""``modelmora bench ...``: every benchmark's command (tables, or JSON with ``--json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from modelmora.cli.common import bench_app, fail, print_json, show


@bench_app.command("overhead")
def bench_overhead(
    spawn_runs: int = typer.Option(10, help="Worker starts to time (median reported)."),
    calls: int = typer.Option(1000, help="Small calls to time (p50/p99 reported)."),
    array_runs: int = typer.Option(10, help="38 MB array round trips to time (median)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """What isolation costs: worker spawn→ready, call round trip, 38 MB array round trip."""
    from modelmora.bench.overhead import format_table, run_overhead

    result = run_overhead(spawn_runs=spawn_runs, calls=calls, array_runs=array_runs)
    show(result, format_table, as_json)


# Commands of the other workflows are added below this line.


@bench_app.command("isolation")
def bench_isolation(
    model: str = typer.Option("embedding", help="Model spec (embedding, whisper, toy:...)."),
    iterations: int = typer.Option(1, help="Load/use/release cycles in each test."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    plot: str | None = typer.Option(None, help="Write a memory-over-time plot to this PNG."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Subprocess-then-exit against in-process del + gc.collect(), with a verdict."""
    from modelmora.bench.isolation import (
        IsolationOptions,
        format_table,
        plot_timelines,
        run_isolation,
    )
    from modelmora.errors import ModelMoraError

    try:
        options = IsolationOptions(model=model, iterations=iterations, device=device)
        result = run_isolation(options)
    except ValueError as exc:
        raise fail(exc, 2) from None
    except ModelMoraError as exc:  # the model failed to load or its worker died
        raise fail(exc, 1) from None
    if plot:
        plot_timelines(result, plot)
    if as_json:
        print_json(result.to_dict())
    else:
        Console().print(format_table(result))


@bench_app.command("startup")
def bench_startup(
    models: Annotated[
        list[str] | None, typer.Option("--models", help="Model spec (repeat for several).")
    ] = None,
    runs: int = typer.Option(5, help="Cold (and warm) starts per model (median reported)."),
    warm: bool = typer.Option(True, help="Also start each model from a spare (framework-warm)."),
    audio: Annotated[
        Path | None,
        typer.Option(help="Recording for Whisper and the diarizer (default: a 2 s tone)."),
    ] = None,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Cold and framework-warm worker start → loaded → first inference, per packaged model."""
    from modelmora.bench.startup import format_table, run_startup

    try:
        result = run_startup(
            models or None, runs=runs, warm=warm, audio=str(audio) if audio else None
        )
    except ValueError as exc:
        raise fail(exc, 2) from None
    show(result, format_table, as_json)


@bench_app.command("diarization")
def bench_diarization(
    folder: Annotated[Path, typer.Argument(help="Folder of <stem>.wav files and their RTTM.")],
    engines: Annotated[
        list[str] | None,
        typer.Option("--engine", help="default|resemblyzer|pyannote|module:Class (repeat)."),
    ] = None,
    device: str = typer.Option("cpu", help="auto|cpu|cuda."),
    threads: int | None = typer.Option(None, help="Numeric threads of each engine's worker."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """DER (no collar; collar 0.5 without overlap), errors, speaker counts, RTF, load, RSS."""
    from modelmora.bench.diarization import format_table, run_diarization_bench

    try:
        result = run_diarization_bench(
            folder, engines or ["default", "resemblyzer"], device, threads=threads
        )
    except ValueError as exc:
        raise fail(exc, 2) from None
    show(result, format_table, as_json)


@bench_app.command("reload")
def bench_reload(
    cycles: int = typer.Option(10, help="Rounds of A, B, C per mode (each request a reload)."),
    threads: int | None = typer.Option(None, help="Numeric threads per worker."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Reload of an evicted embedding model, cold against warm (spares), under a budget of two."""
    from modelmora.bench.reload import ReloadBenchOptions, format_table, run_reload_bench

    try:
        options = ReloadBenchOptions(cycles=cycles, threads=threads)
    except ValueError as exc:
        raise fail(exc, 2) from None
    result = run_reload_bench(options)
    show(result, format_table, as_json)


@bench_app.command("server")
def bench_server(
    requests: int = typer.Option(1000, help="Mixed requests in the churn test."),
    clients: int = typer.Option(32, help="Concurrent clients in the throughput test."),
    overhead_calls: int = typer.Option(300, help="Sequential calls timed for the overhead."),
    embedding_model: str | None = typer.Option(
        None, help="Embedding model name or folder (default: the packaged all-MiniLM-L6-v2)."
    ),
    models: bool = typer.Option(
        True, help="Also the brought models: image embeddings, rerank, PATCH under load, a fleet."
    ),
    only_models: bool = typer.Option(False, help="Only those (skip the embedding/churn part)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """HTTP overhead over a direct worker call, batching throughput, churn under a budget."""
    import tempfile

    from rich.table import Table

    from modelmora.bench.server import ServerBenchOptions, format_table, run_server_bench
    from modelmora.bench.server_models import format_rows, run_models_bench

    try:
        options = ServerBenchOptions(
            churn_requests=requests,
            clients=clients,
            overhead_calls=overhead_calls,
            embedding_model=embedding_model,
        )
    except ValueError as exc:
        raise fail(exc, 2) from None
    result = {} if only_models else run_server_bench(options)
    if models or only_models:
        with tempfile.TemporaryDirectory(prefix="modelmora-bench-models-") as folder:
            result["models"] = run_models_bench(folder=Path(folder))
    if as_json:
        print_json(result)
        return
    table = format_table(result) if not only_models else Table(title="modelmora bench server")
    if only_models:
        for column in ("measurement", "figure", "target", "verdict"):
            table.add_column(column)
    for row in format_rows(result["models"]) if "models" in result else []:
        table.add_row(*row)
    Console().print(table)


@bench_app.command("peers")
def bench_peers(
    servers: str = typer.Option(
        "modelmora,litserve,ray-serve",
        help="Comma-separated: modelmora, litserve, ray-serve, infinity.",
    ),
    rounds: int = typer.Option(2, help="Alternated rounds (each server once per round)."),
    duration: float = typer.Option(10.0, help="Seconds of load per measurement."),
    connections: int = typer.Option(32, help="Concurrent connections of the loaded measurement."),
    model: str | None = typer.Option(
        None, help="sentence-transformers folder (default: the packaged all-MiniLM-L6-v2)."
    ),
    no_wrk: bool = typer.Option(False, "--no-wrk", help="Use the built-in client, not wrk."),
    http_workers: str = typer.Option(
        "1",
        help="Comma-separated front-end counts for ModelMora (e.g. 1,2,4): one ModelMora per "
        "count, 'modelmora-http<N>' in the table for N > 1.",
    ),
    infinity_bin: str | None = typer.Option(
        None,
        help="The infinity_emb command of a virtual environment of its own (infinity-emb pins "
        "older libraries); default: the one on the PATH.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """ModelMora beside LitServe, Ray Serve and infinity: same model, same batching, same load."""
    from modelmora.bench.peers.run import PeersOptions, format_table, run_peers_bench

    try:
        options = PeersOptions(
            servers=tuple(s.strip() for s in servers.split(",") if s.strip()),
            rounds=rounds,
            duration_s=duration,
            connections=connections,
            model=model,
            use_wrk=not no_wrk,
            http_workers=tuple(int(n) for n in http_workers.split(",") if n.strip()),
            infinity_bin=infinity_bin,
        )
    except ValueError as exc:
        raise fail(exc, 2) from None
    result = run_peers_bench(options)
    show(result, format_table, as_json)


@bench_app.command("pipeline")
def bench_pipeline(
    files: int = typer.Option(10, help="Generated two-speaker conversations (~30 s each)."),
    device: str = typer.Option("auto", help="auto|cpu|cuda, for every design."),
    audio_dir: Annotated[Path | None, typer.Option(help="Generated audio cache.")] = None,
    jfk: Annotated[Path | None, typer.Option(help="Real JFK recording (WER).")] = None,
    meeting: Annotated[Path | None, typer.Option(help="Optional real meeting wav (DER).")] = None,
    meeting_rttm: Annotated[Path | None, typer.Option(help="The meeting's reference RTTM.")] = None,
    work_dir: Annotated[Path | None, typer.Option(help="Keep outputs and logs here.")] = None,
    backend: str = typer.Option("local", help="local, or ray: the local batch beside Ray's."),
    quality: bool = typer.Option(
        False,
        "--quality",
        help="Instead: the packaged models side by side (Whisper base vs tiny.en, batched vs "
        "sequential, summary facts of SmolLM2 vs Gemma).",
    ),
    long_audio: Annotated[
        Path | None, typer.Option(help="With --quality: a long wav (+ .txt) for batching.")
    ] = None,
    batch_size: int = typer.Option(8, help="With --quality: the batched side's batch size."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Memory, wall time and quality of the workflow against in-process and per-file designs."""
    from modelmora.bench.pipeline import format_table, run_pipeline_bench

    if quality:
        _bench_quality(audio_dir, jfk, long_audio, batch_size, as_json)
        return
    try:
        result = run_pipeline_bench(
            files=files,
            device=device,
            audio_dir=audio_dir,
            jfk=jfk,
            meeting=meeting,
            meeting_rttm=meeting_rttm,
            work_dir=work_dir,
            backend=backend,
        )
    except ValueError as exc:
        raise fail(exc, 2) from None
    show(result, format_table, as_json)


def _bench_quality(
    audio_dir: Path | None, jfk: Path | None, long_audio: Path | None, batch: int, as_json: bool
) -> None:
    from modelmora.bench.pipeline import DEFAULT_AUDIO_DIR, make_bench_audio
    from modelmora.bench.quality import format_quality, run_quality_bench

    folder = audio_dir or DEFAULT_AUDIO_DIR
    example = Path(__file__).resolve().parents[2] / "examples" / "conversation.wav"
    generated = make_bench_audio(folder, 3)
    recordings = [p for p in (example, jfk) if p is not None and p.is_file()]
    recordings += [*generated["two"], *generated["three"]]
    result = run_quality_bench(folder, recordings, long_audio, batch_size=batch)
    show(result, format_quality, as_json)


@bench_app.command("speakers")
def bench_speakers(
    ami_dir: Annotated[
        Path | None, typer.Option(help="Folder of the AMI excerpts + ami.rttm.")
    ] = None,
    audio_dir: Annotated[Path | None, typer.Option(help="Generated voices cache.")] = None,
    engine: str = typer.Option("default", help="Diarizer engine (default, resemblyzer...)."),
    ami: bool = typer.Option(True, "--ami/--no-ami", help="Run the AMI part."),
    generated: bool = typer.Option(True, "--generated/--no-generated", help="Run the espeak part."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Cross-file linking and naming accuracy (AMI, generated voices) and what they cost."""
    from modelmora.bench.speakers import format_table, run_speakers_bench

    parts = [name for name, wanted in (("ami", ami), ("generated", generated)) if wanted]
    result = run_speakers_bench(ami_dir=ami_dir, audio_dir=audio_dir, engine=engine, parts=parts)
    show(result, format_table, as_json)
