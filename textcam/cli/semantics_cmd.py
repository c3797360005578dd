"""``textcam semantics``: give every channel of the explained layer a direction in CLIP space."""

from __future__ import annotations

import click

from textcam.cli.bundle_arg import BUNDLE_HELP, resolve_bundle
from textcam.cli.safe_text import safe_text


@click.command("semantics", epilog=BUNDLE_HELP + " semantics writes into the bundle, so default is refused.")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--probe", required=True, metavar="SOURCE",
              help="Probe images: a directory (searched recursively), a file listing image paths, "
                   "parquet:PATH_OR_GLOB (Parquet shards, image bytes in --probe-column) or tar:PATH_OR_GLOB "
                   "(WebDataset-style uncompressed tar shards; members ending .jpg/.png/...). Shards are read in "
                   "place, never unpacked; their images are ordered by shard path, then row or member.")
@click.option("--probe-column", default="image", show_default=True, metavar="NAME",
              help="parquet: the column of encoded image bytes (binary, or a struct with a 'bytes' field).")
@click.option("--clip", "clip_spec", default=None, metavar="MODEL[:PRETRAINED]",
              help="open_clip model, e.g. ViT-B-32:openai (downloads), or textcam-tiny-clip.")
@click.option("--clip-checkpoint", type=click.Path(dir_okay=False), default=None, metavar="PATH",
              help="A local CLIP state dict (offline use); needs --clip-model.")
@click.option("--clip-model", default=None, metavar="MODEL", help="Architecture of --clip-checkpoint.")
@click.option("--vocab", multiple=True, default=("builtin:attributes",), show_default=True,
              metavar="FILE|builtin:attributes|builtin:shapes-world|builtin:classes",
              help="Phrase sources (repeatable).")
@click.option("--templates", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Prompt templates, one per line with '{}' for the phrase.")
@click.option("-m", "m", type=click.IntRange(min=1), default=50, show_default=True,
              help="Top and bottom images per channel.")
@click.option("--lda", type=click.Choice(["shrinkage", "pooled", "meandiff", "topmean"]), default="shrinkage",
              show_default=True,
              help="shrinkage: per-channel Ledoit-Wolf LDA; pooled: one global whitening (fast); meandiff, "
                   "topmean: baselines (no whitening; mean of the top images only).")
@click.option("--cache", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Cache CLIP image embeddings here (keyed by model and file content); an interrupted build's "
                   "checkpoint goes here too, unless --resume-dir says otherwise.")
@click.option("--resume-dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Checkpoint folder: the scan, embed and lda results are saved as each completes, and a rerun "
                   "with the same bundle, probe set, -m, --lda and CLIP continues after the last one (another "
                   "build's checkpoint is refused). Default: inside --cache; none without it. Removed on success.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--no-fuse", is_flag=True, help="Do not write the graph with the ranking fused in.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process (no Ray needed). ray: the scan, CLIP embedding and LDA on a Ray cluster "
                   "(actor pools; CLIP on GPUs when it has them); the same result. Needs pip install 'textcam[ray]'.")
@click.option("--address", default=None, metavar="HOST:PORT|ray://HOST:PORT|auto",
              help="--engine ray: the cluster to join (unreachable: one line after at most 30 s). Default: start a "
                   "local Ray instance for this build. Bundle, probe and --cache must be at the same paths on "
                   "every node.")
@click.option("--connect-timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              metavar="SECONDS",
              help="--engine ray --address: give up when the address does not accept a connection and "
              "answer as Ray's gRPC server within this long.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="--engine ray: actors per pool (scan; CLIP: at most one per GPU when there are GPUs).")
def semantics_command(bundle, probe, probe_column, clip_spec, clip_checkpoint, clip_model, vocab, templates, m, lda,
                      cache, resume_dir, batch_size, no_fuse, engine, address, connect_timeout,
                      workers):
    """Build semantics.safetensors for a bundle: CLIP + LDA per channel, and a vocabulary.

    The scan keeps only each channel's -m top and -m bottom images, so its memory does not grow
    with the probe set (O(channels x M)); CLIP embeds only those images. --engine ray runs the
    same phases on a Ray cluster (or a local Ray instance) and gives the same result.

    Vocabulary and template files must be regular UTF-8 files (at most 16 MiB, 100,000 phrases of
    300 characters). Phrases whose words the CLIP cannot read (a compact checkpoint holds only the
    tokens it was built with; others embed as zero vectors) are refused before any work; the
    output reports the vocabulary's coverage.

    \b
    Examples:
      textcam semantics resnet50.textcam --probe imagenet_val/ --clip ViT-B-32:openai --cache ~/.cache/textcam
      textcam semantics color.textcam --probe probe/ --vocab builtin:shapes-world \\
          --clip-checkpoint tiny_clip.safetensors --clip-model textcam-tiny-clip
      textcam semantics resnet50.textcam --probe 'parquet:/data/probe/*.parquet' --clip ViT-B-32:openai \\
          --engine ray --address 10.0.0.5:6379 --workers 16
    """
    from textcam.runtime.bundle import Bundle
    from textcam.semantics_store import build_semantics, load_clip
    from textcam.semantics_store.vocabulary import load_templates, load_vocabulary

    bundle = resolve_bundle(bundle, writes=True)
    # the cheap checks first: the vocabulary and templates, before CLIP loads and the probe is scanned
    vocabulary = load_vocabulary(vocab, Bundle.open(bundle, verify_checksum=False).classes)
    prompt_templates = load_templates(templates)
    clip = load_clip(clip_spec, clip_checkpoint, clip_model)
    coverage = clip.check_coverage(vocabulary.phrases, prompt_templates, where=f"--vocab {','.join(vocab)}")
    report = build_semantics(bundle, probe, clip, vocab=vocab, templates=templates, m=m, lda=lda, cache=cache,
                             batch_size=batch_size, fuse=not no_fuse, resume_dir=resume_dir,
                             engine=engine, address=address, workers=workers, probe_column=probe_column,
                             connect_timeout_s=connect_timeout,
                             log=lambda message: click.echo(safe_text(message), err=True))
    for note in report.notes:
        click.echo(safe_text(f"note: {note}"), err=True)
    phases = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in report.seconds.items())
    click.echo(safe_text(f"wrote {report.store}: {report.channels} channels x {report.dim} dims, {report.phrases} "
                         f"phrases, M={report.m} over {report.probe_images} probe images"))
    if report.resumed:
        click.echo(safe_text(f"resumed from checkpoint {report.checkpoint}: {', '.join(report.resumed)} done before"),
                   err=True)
    click.echo(f"CLIP image embeddings: {report.embedded_images} distinct images of {report.probe_images} (at most "
               f"2 x M x channels = {2 * report.m * report.channels}), {report.embedding_cache_hits} of them reused")
    click.echo(f"vocabulary coverage: {coverage.describe()}")
    click.echo(f"time per phase: {phases}; peak memory {report.peak_memory_mb:.0f} MB")
