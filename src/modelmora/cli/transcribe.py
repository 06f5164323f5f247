"""``modelmora transcribe`` and ``modelmora relabel``: the batch workflow's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelmora.cli.common import LIBRARY_HELP, app, console, fail


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
    diarizer: str | None = typer.Option(
        None, help="default|resemblyzer|pyannote|package.module:Class (with --diarize)."
    ),
    diarizer_model: str | None = typer.Option(
        None, help="pyannote pipeline: Hugging Face id or local folder."
    ),
    hf_token: str | None = typer.Option(
        None, help="Hugging Face token for gated pyannote pipelines (default $HF_TOKEN)."
    ),
    num_speakers: int | None = typer.Option(None, help="Exact number of speakers."),
    min_speakers: int | None = typer.Option(None, help="Fewest speakers to consider."),
    max_speakers: int | None = typer.Option(None, help="Most speakers to consider."),
    speakers: bool | None = typer.Option(
        None, "--speakers/--no-speakers", help="Name enrolled speakers (needs --diarize)."
    ),
    library: str | None = typer.Option(
        None, help="Speaker library folder (implies --speakers; default under the cache dir)."
    ),
    link: bool | None = typer.Option(
        None, "--link/--no-link", help="Same voice, same label in every file (default on)."
    ),
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
            diarizer=diarizer,
            diarizer_model=diarizer_model,
            hf_token=hf_token,
            num_speakers=num_speakers,
            min_speakers=min_speakers,
            max_speakers=max_speakers,
            speakers=speakers,
            library=library,
            link=link,
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
        raise fail(exc, 2) from None
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


@app.command("relabel")
def relabel(
    out_dir: Annotated[Path, typer.Argument(help="The output folder of a transcribe run.")],
    pairs: Annotated[list[str], typer.Argument(help="OLD=NEW pairs: SPEAKER_03=Maria.")],
    enroll_voices: bool = typer.Option(
        False, "--enroll", help="Also add the renamed voices to the speaker library."
    ),
    library: str | None = typer.Option(None, help=LIBRARY_HELP),
) -> None:
    """Rename speakers in every output of a run (txt srt vtt json tsv rttm summary)."""
    from modelmora.speech.speakers import SpeakerLibrary
    from modelmora.workflow.speakers import parse_relabels, relabel_run

    try:
        mapping = parse_relabels(pairs)
        shelf = SpeakerLibrary(library) if enroll_voices else None
        done = relabel_run(out_dir, mapping, library=shelf)
    except ValueError as exc:
        raise fail(exc, 2) from None
    renamed = ", ".join(f"{k} → {v}" for k, v in done["renamed"].items())
    console.print(f"relabelled {len(done['files'])} file(s): {renamed}", markup=False)
    if done["enrolled"]:
        console.print(f"enrolled {', '.join(done['enrolled'])} in {shelf}", markup=False)
