"""The ``modelmora`` command line: transcribe, serve, bench.

Each command is a thin wrapper: it parses options, calls the engine in its own module, and
prints. Heavy modules are imported inside the commands so ``modelmora --help`` stays fast.
Exit codes: 0 done, 1 some work failed (the rest was done), 2 usage error.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

__all__ = ["app", "main"]

app = typer.Typer(
    name="modelmora",
    help="Run ML models in isolated worker processes: memory measured, release verified.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Measure isolation, overhead and the workflows.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        from modelmora import __version__

        typer.echo(f"modelmora {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages to stderr."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )


def _print_json(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


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
    if as_json:
        _print_json(result)
    else:
        Console().print(format_table(result))


# Commands of the other workflows are added below this line.


@app.command("transcribe")
def transcribe(
    audio: Annotated[list[Path], typer.Argument(help="Audio files (any format FFmpeg reads).")],
    output_dir: str | None = typer.Option(None, "--output-dir", "-o", help="Output folder."),
    output_format: str | None = typer.Option(
        None,
        "--output-format",
        "-f",
        help="txt|srt|vtt|json|tsv|rttm|html|docx|all (comma-separated).",
    ),
    model: str | None = typer.Option(
        None, help="Whisper size name (base: default, tiny.en, small...) or model folder."
    ),
    language: str | None = typer.Option(None, help="Language code (default: detect)."),
    device: str | None = typer.Option(None, help="auto|cpu|cuda."),
    compute_type: str | None = typer.Option(None, help="CTranslate2 compute type."),
    beam_size: int | None = typer.Option(None, help="Whisper beam width."),
    batch_size: int | None = typer.Option(
        None, help="30 s chunks decoded at once (1: sequential, the default)."
    ),
    initial_prompt: str | None = typer.Option(
        None, help="Text Whisper sees as said before the audio (names, spellings)."
    ),
    hotwords: str | None = typer.Option(None, help="Words Whisper is nudged towards."),
    diarize: bool | None = typer.Option(None, "--diarize/--no-diarize", help="Label speakers."),
    num_speakers: int | None = typer.Option(None, help="Exact number of speakers."),
    min_speakers: int | None = typer.Option(None, help="Fewest speakers to consider."),
    max_speakers: int | None = typer.Option(None, help="Most speakers to consider."),
    summarize: bool | None = typer.Option(
        None, "--summarize/--no-summarize", help="Write <stem>.summary.md with an LLM."
    ),
    llm: str | None = typer.Option(
        None, help="smollm2 (default), gemma3-270m, a GGUF path or an OpenAI-compatible URL."
    ),
    memory_budget: str | None = typer.Option(None, help="RSS cap per stage worker (4G, 512M)."),
    memory_report: str | None = typer.Option(None, help="Write the memory report JSON here."),
    threads: int | None = typer.Option(None, help="Numeric threads per worker."),
    config: Annotated[Path | None, typer.Option(help="YAML file of options.")] = None,
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo finished work (no resume)."),
    backend: str | None = typer.Option(None, help="local|ray: where the stages' models run."),
    address: str | None = typer.Option(None, help="Ray cluster address (with --backend ray)."),
    max_line_width: int | None = typer.Option(None, help="srt/vtt: characters per line."),
    max_line_count: int | None = typer.Option(None, help="srt/vtt: lines per cue."),
    max_duration: float | None = typer.Option(None, help="srt/vtt: longest cue, seconds."),
    min_duration: float | None = typer.Option(None, help="srt/vtt: shortest cue, seconds."),
    highlight_words: bool | None = typer.Option(
        None, "--highlight-words/--no-highlight-words", help="srt/vtt: karaoke-style cues."
    ),
    txt_timestamps: bool | None = typer.Option(
        None, "--txt-timestamps/--no-txt-timestamps", help="txt: [hh:mm:ss] per speaker turn."
    ),
    embed_audio: bool | None = typer.Option(
        None, "--embed-audio/--no-embed-audio", help="html: embed the recording in the page."
    ),
) -> None:
    """Transcribe audio files: Whisper, word alignment, speakers, summary; one worker per stage."""
    from modelmora.workflow.engine import transcribe_files
    from modelmora.workflow.options import load_options

    try:
        options = load_options(
            config,
            output_dir=output_dir,
            formats=output_format,
            model=model,
            language=language,
            device=device,
            compute_type=compute_type,
            beam_size=beam_size,
            batch_size=batch_size,
            initial_prompt=initial_prompt,
            hotwords=hotwords,
            diarize=diarize,
            num_speakers=num_speakers,
            min_speakers=min_speakers,
            max_speakers=max_speakers,
            summarize=summarize,
            llm=llm,
            memory_budget=memory_budget,
            memory_report=memory_report,
            threads=threads,
            overwrite=overwrite or None,
            backend=backend,
            address=address,
            max_line_width=max_line_width,
            max_line_count=max_line_count,
            max_duration=max_duration,
            min_duration=min_duration,
            highlight_words=highlight_words,
            txt_timestamps=txt_timestamps,
            embed_audio=embed_audio,
        )
    except ValueError as exc:
        console.print(f"error: {exc}", style="red", markup=False, highlight=False)
        raise typer.Exit(2) from None
    try:
        report = transcribe_files(audio, options, console=console)
    except OSError as exc:  # the output folder cannot be written (full disk, permissions)
        console.print(f"error: cannot write the outputs: {exc}", style="red", markup=False)
        raise typer.Exit(1) from None
    done = len(report.files) - len(report.failed)
    console.print(
        f"{done} of {len(report.files)} file(s) done, {len(report.failed)} failed; "
        f"outputs in {report.out_dir}, report {report.report_path}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(report.exit_code)


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
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    except ModelMoraError as exc:  # the model failed to load or its worker died
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    if plot:
        plot_timelines(result, plot)
    if as_json:
        _print_json(result.to_dict())
    else:
        Console().print(format_table(result))


@bench_app.command("startup")
def bench_startup(
    models: Annotated[
        list[str] | None, typer.Option("--models", help="Model spec (repeat for several).")
    ] = None,
    runs: int = typer.Option(5, help="Cold (and warm) starts per model (median reported)."),
    warm: bool = typer.Option(True, help="Also start each model from a spare (framework-warm)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Cold and framework-warm worker start → loaded → first inference, per packaged model."""
    from modelmora.bench.startup import format_table, run_startup

    try:
        result = run_startup(models or None, runs=runs, warm=warm)
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    if as_json:
        _print_json(result)
    else:
        Console().print(format_table(result))


@app.command("serve")
def serve(
    config: Path | None = typer.Option(None, help="YAML model registry (default: packaged)."),
    host: str | None = typer.Option(None, help="Address to listen on (default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port to listen on (default 8000)."),
    log_level: str = typer.Option(
        "info", help="critical, error, warning, info, debug or trace (the server's own log)."
    ),
    access_log: bool = typer.Option(True, help="One line per request on stdout."),
) -> None:
    """Serve models over HTTP (OpenAI-compatible and native routes) under a memory budget."""
    from modelmora.serving.config import ConfigError, default_config, load_config
    from modelmora.serving.http.app import serve as run_server

    try:
        settings = load_config(config) if config is not None else default_config()
        overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
        settings = settings.model_copy(update=overrides)
    except ConfigError as exc:
        console.print(f"error: {exc}", style="red", markup=False, highlight=False)
        raise typer.Exit(2) from None
    levels = ("critical", "error", "warning", "info", "debug", "trace")
    if log_level.lower() not in levels:
        console.print(f"error: --log-level must be one of {', '.join(levels)}", style="red")
        raise typer.Exit(2)
    try:
        run_server(settings, log_level=log_level.lower(), access_log=access_log)
    except ConfigError as exc:  # the run-time changes file no longer validates
        console.print(f"error: {exc}", style="red", markup=False, highlight=False)
        raise typer.Exit(2) from None


@app.command("adapters")
def adapters(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the adapter kinds (built-in and published by installed packages) and what each serves.

    Reading them imports each adapter's module, never its ML framework.
    """
    from rich.table import Table

    from modelmora.models import adapter_capabilities, adapter_table

    rows = []
    for kind, path in sorted(adapter_table().items()):
        row: dict[str, object] = {"kind": kind, "class": path}
        try:
            row.update(adapter_capabilities(kind).to_dict())
        except ValueError as exc:
            row["error"] = str(exc)
        rows.append(row)
    if as_json:
        _print_json(rows)
        return
    table = Table("kind", "task", "routes", "device", "source", "frameworks", "class")
    for row in rows:
        if "error" in row:
            table.add_row(
                str(row["kind"]), "[red]unavailable[/]", str(row["error"]), "", "", "", ""
            )
            continue
        flags = ["yes" if row[k] else "" for k in ("takes_device", "takes_source")]
        routes = ", ".join(row["routes"]) or "predict"  # type: ignore[arg-type]
        frameworks = ", ".join(row["frameworks"])  # type: ignore[arg-type]
        table.add_row(
            str(row["kind"]), str(row["task"]), routes, *flags, frameworks, str(row["class"])
        )
    Console().print(table)


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
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    result = run_reload_bench(options)
    if as_json:
        _print_json(result)
    else:
        Console().print(format_table(result))


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
        console.print(f"error: {exc}", style="red", markup=False, highlight=False)
        raise typer.Exit(2) from None
    result = {} if only_models else run_server_bench(options)
    if models or only_models:
        with tempfile.TemporaryDirectory(prefix="modelmora-bench-models-") as folder:
            result["models"] = run_models_bench(folder=Path(folder))
    if as_json:
        _print_json(result)
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
        "modelmora,litserve,ray-serve", help="Comma-separated: modelmora, litserve, ray-serve."
    ),
    rounds: int = typer.Option(2, help="Alternated rounds (each server once per round)."),
    duration: float = typer.Option(10.0, help="Seconds of load per measurement."),
    connections: int = typer.Option(32, help="Concurrent connections of the loaded measurement."),
    model: str | None = typer.Option(
        None, help="sentence-transformers folder (default: the packaged all-MiniLM-L6-v2)."
    ),
    no_wrk: bool = typer.Option(False, "--no-wrk", help="Use the built-in client, not wrk."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """ModelMora beside LitServe and Ray Serve: same model, same batching, same load."""
    from modelmora.bench.peers.run import PeersOptions, format_table, run_peers_bench

    try:
        options = PeersOptions(
            servers=tuple(s.strip() for s in servers.split(",") if s.strip()),
            rounds=rounds,
            duration_s=duration,
            connections=connections,
            model=model,
            use_wrk=not no_wrk,
        )
    except ValueError as exc:
        console.print(f"error: {exc}", style="red", markup=False, highlight=False)
        raise typer.Exit(2) from None
    result = run_peers_bench(options)
    if as_json:
        _print_json(result)
    else:
        Console().print(format_table(result))


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
        console.print(f"error: {exc}", style="red", markup=False, highlight=False)
        raise typer.Exit(2) from None
    if as_json:
        _print_json(result)
    else:
        Console().print(format_table(result))


@app.command("pull")
def pull(
    name: str = typer.Argument(..., help="A model of the config (its source is fetched)."),
    config: Path | None = typer.Option(None, help="YAML model registry (default: packaged)."),
) -> None:
    """Fetch a model's source into the cache and write or check its modelmora.lock entry."""
    from modelmora.errors import ModelMoraError
    from modelmora.models.sources import LOCK_NAME, LockFile, is_hub_id, prepare
    from modelmora.serving.config import ConfigError, default_config, load_config
    from modelmora.serving.registry import RuntimeRegistry

    try:
        settings = load_config(config) if config is not None else default_config()
        registry_file = settings.registry_file or settings.cache_dir / "registry.yaml"
        names = {m.name for m in settings.models}
        settings = RuntimeRegistry(registry_file, names).apply(settings)
        model = settings.model(name)
    except ConfigError as exc:
        console.print(f"error: {exc}", style="red", markup=False, highlight=False)
        raise typer.Exit(2) from None
    except KeyError:
        known = ", ".join(m.name for m in settings.models)
        console.print(f"error: no model {name!r} in the config (it has {known})", style="red")
        raise typer.Exit(2) from None
    source = model.source
    if source is None or not (is_hub_id(source) or Path(source).exists()):
        console.print(f"{name}: nothing to fetch (source {source or 'packaged'})")
        return
    lock = LockFile(settings.lock_file or settings.cache_dir / LOCK_NAME)
    try:
        ready = prepare(name, source, model.revision, settings.cache_dir / "hub", lock)
    except ModelMoraError as exc:
        console.print(f"error: {exc}", style="red", markup=False, highlight=False)
        raise typer.Exit(1) from None
    verb = "locked in" if ready.locked_now else "matches"
    _print_json({"model": name, "path": ready.path, "revision": ready.revision,
                 "lock_file": str(lock.path), "lock": verb})  # fmt: skip


# --- the registry of a running server ------------------------------------------------------

models_app = typer.Typer(
    help="List and change the models of a running server (token from MODELMORA_API_KEY).",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")

_URL = typer.Option("http://127.0.0.1:8000", "--url", envvar="MODELMORA_URL", help="The server.")
_PARAM = typer.Option([], "--param", "-p", help="An adapter parameter, KEY=VALUE (repeatable).")
_SET = typer.Option([], "--set", help="A model field, KEY=VALUE: max_batch_size=8 (repeatable).")


def _api(url: str, method: str, path: str, body: object = None) -> Any:
    """One call to the server's native API; an error answer exits 1 with its message."""
    import os

    import httpx

    key = os.environ.get("MODELMORA_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        reply = httpx.request(
            method, url.rstrip("/") + path, json=body, headers=headers, timeout=900
        )
    except httpx.TransportError as exc:
        console.print(f"error: cannot reach {url}: {exc}", style="red", markup=False)
        raise typer.Exit(1) from None
    try:
        data = reply.json()
    except ValueError:
        data = {"error": {"message": reply.text}}
    if reply.status_code >= 400:
        message = (data.get("error") or {}).get("message") or reply.text
        console.print(f"error ({reply.status_code}): {message}", style="red", markup=False)
        raise typer.Exit(1)
    return data


def _pairs(items: list[str], what: str) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            console.print(f"error: {what} {item!r}: expected KEY=VALUE", style="red", markup=False)
            raise typer.Exit(2)
        out[key.strip()] = yaml.safe_load(value)  # 8 → int, true → bool, [a, b] → list
    return out


def _entry(source: str | None, params: list[str], fields: list[str]) -> dict[str, Any]:
    entry = _pairs(fields, "--set")
    if source is not None:
        entry["source"] = source
    if params:
        entry["params"] = {**entry.get("params", {}), **_pairs(params, "--param")}
    return entry


@models_app.command("list")
def models_list(
    url: str = _URL, as_json: bool = typer.Option(False, "--json", help="Print JSON.")
) -> None:
    """The server's models: adapter, task, state, where each comes from, memory."""
    from rich.table import Table

    models = _api(url, "GET", "/api/v1/models")["models"]
    if as_json:
        _print_json(models)
        return
    table = Table("name", "adapter", "task", "state", "origin", "rss MB", "error")
    for m in models:
        cells = [m["name"], m["adapter"], m.get("task", ""), m["state"], m.get("origin", "")]
        table.add_row(*map(str, cells), f"{m['rss_mb']:.0f}", m.get("error") or "")
    Console().print(table)


@models_app.command("info")
def models_info(name: str, url: str = _URL) -> None:
    """One model: its state, footprint, counters and config entry (JSON)."""
    _print_json(_api(url, "GET", f"/api/v1/models/{name}"))


@models_app.command("add")
def models_add(
    name: str,
    adapter: str = typer.Option(..., help="An adapter kind or package.module:Class."),
    source: str | None = typer.Option(None, help="A model folder or hub id."),
    param: list[str] = _PARAM,
    field: list[str] = _SET,
    url: str = _URL,
) -> None:
    """Register a model (the same fields as a model entry of the config file)."""
    body = {"name": name, "adapter": adapter, **_entry(source, param, field)}
    _print_json(_api(url, "POST", "/api/v1/models", body))


@models_app.command("update")
def models_update(
    name: str,
    source: str | None = typer.Option(None, help="A model folder or hub id."),
    param: list[str] = _PARAM,
    field: list[str] = _SET,
    url: str = _URL,
) -> None:
    """Change fields of a model; a resident worker is replaced without dropping requests."""
    _print_json(_api(url, "PATCH", f"/api/v1/models/{name}", _entry(source, param, field)))


@models_app.command("rm")
def models_rm(name: str, url: str = _URL) -> None:
    """Unload a model (its release verified) and remove it from the registry."""
    _print_json(_api(url, "DELETE", f"/api/v1/models/{name}"))


@models_app.command("load")
def models_load(name: str, url: str = _URL) -> None:
    """Make a model resident now."""
    _print_json(_api(url, "POST", f"/api/v1/models/{name}/load"))


@models_app.command("unload")
def models_unload(name: str, url: str = _URL) -> None:
    """Stop a model's workers and report what was released."""
    _print_json(_api(url, "POST", f"/api/v1/models/{name}/unload"))


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
    if as_json:
        _print_json(result)
    else:
        Console().print(format_quality(result))


def main() -> None:
    """Entry point of the ``modelmora`` console script."""
    app()


if __name__ == "__main__":
    main()
