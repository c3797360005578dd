"""textcam.engines.entries: engine bookkeeping without a GPU: precisions, batch profiles, file names,
manifest entries, engine choice, rebuild hints. None of this needs TensorRT."""

from __future__ import annotations

import json

import pytest

from textcam.engines.entries import (
    BatchProfile,
    EngineEntry,
    check_precision,
    check_precision_on_gpu,
    choose_engine,
    engine_entries,
    engine_file_name,
    rebuild_command,
    reduced_graph_name,
    replace_entry,
)
from textcam.errors import TextcamError
from textcam.runtime.bundle_files import sha256_file

MODEL_SHA = "ab" * 32


def entry(precision="fp32", cc="9.0", trt="10.8.0.43", profile=(1, 8, 32), **extra) -> EngineEntry:
    return EngineEntry(
        file=f"engines/{engine_file_name(precision, cc, trt)}", precision=precision, tensorrt=trt,
        compute_capability=cc, profile=BatchProfile(*profile), concurrency=2, model_sha256=MODEL_SHA, **extra,
    )


def manifest_with(*entries: EngineEntry) -> dict:
    return {"model": {"sha256": MODEL_SHA}, "engines": [e.to_dict() for e in entries]}


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# --- precision and profile -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["fp32", "fp16", "bf16"])
def test_known_precisions_pass(value):
    assert check_precision(value) == value


@pytest.mark.parametrize(("precision", "cc", "ok"), [
    ("bf16", "7.5", False), ("bf16", "8.0", True), ("bf16", "12.0", True), ("fp16", "7.5", True), ("fp32", "7.0", True),
])
def test_bf16_needs_an_ampere_or_newer_gpu(precision, cc, ok):
    if ok:
        assert check_precision_on_gpu(precision, cc, "Tesla T4") == precision
        return
    with pytest.raises(TextcamError) as exc:
        check_precision_on_gpu(precision, cc, "Tesla T4")
    message = one_line(exc)
    assert "Tesla T4" in message and cc in message and "runs fp32, fp16" in message and "bf16" not in message[-12:]


def test_unknown_precision_is_one_line_listing_the_choices():
    with pytest.raises(TextcamError) as exc:
        check_precision("fp61")
    message = one_line(exc)
    assert "fp32, fp16, bf16" in message and "did you mean fp16" in message
    with pytest.raises(TextcamError, match="int8"):
        check_precision("int8")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ((None, None, None), (1, 8, 32)),
        ((None, None, 4), (1, 4, 4)),  # opt clamps to a small max
        ((64, None, None), (64, 64, 64)),  # max and opt follow a large min
        ((2, 16, None), (2, 16, 32)),
        ((None, 48, None), (1, 48, 48)),
        ((1, 1, 1), (1, 1, 1)),
    ],
)
def test_profile_defaults_fill_only_what_is_missing(given, expected):
    profile = BatchProfile.resolve(*given)
    assert (profile.min, profile.opt, profile.max) == expected


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        ((8, 4, 16), "min <= opt <= max"),
        ((1, 40, 32), "min <= opt <= max"),
        ((8, None, 4), "min <= opt <= max"),
        ((0, None, None), "--min-batch 0: expected a positive integer"),
        ((None, -1, None), "--opt-batch -1"),
        ((None, None, 2.5), "--max-batch 2.5"),
        ((None, True, None), "--opt-batch True"),
        ((1, 8, 100_000), "at most 4096"),
    ],
)
def test_bad_profiles_are_one_line_errors(given, fragment):
    with pytest.raises(TextcamError) as exc:
        BatchProfile.resolve(*given)
    assert fragment in one_line(exc)


def test_chunks_split_above_max_and_pad_below_min():
    profile = BatchProfile(1, 8, 32)
    assert profile.chunks(70) == [(0, 32, 32), (32, 64, 32), (64, 70, 6)]
    assert profile.chunks(32) == [(0, 32, 32)]
    assert profile.chunks(0) == []
    assert BatchProfile(4, 4, 8).chunks(3) == [(0, 3, 4)]
    assert BatchProfile(4, 4, 8).chunks(9) == [(0, 8, 8), (8, 9, 4)]


def test_profile_round_trips_through_the_manifest():
    profile = BatchProfile(2, 8, 16)
    assert BatchProfile.from_dict(json.loads(json.dumps(profile.to_dict()))) == profile
    with pytest.raises(TextcamError, match="expected"):
        BatchProfile.from_dict({"min": 1, "max": 4})


# --- names, entries, choice -------------------------------------------------------------------------------------


def test_engine_file_name_spells_the_key():
    assert engine_file_name("fp16", "9.0", "10.8.0.43") == "fp16-sm90-trt10.8.0.43.plan"
    assert engine_file_name("bf16", "12.0", "11.1.0") == "bf16-sm120-trt11.1.0.plan"
    assert engine_file_name("fp32", "8.6", "10.3.0+cuda12 x") == "fp32-sm86-trt10.3.0_cuda12_x.plan"
    with pytest.raises(TextcamError, match="compute capability"):
        engine_file_name("fp32", "hopper", "10.8")
    with pytest.raises(TextcamError, match="precision"):
        engine_file_name("int8", "9.0", "10.8")


def test_reduced_graph_names():
    assert reduced_graph_name("fp16") == "model.fp16.onnx"
    assert reduced_graph_name("bf16") == "model.bf16.onnx"
    with pytest.raises(TextcamError, match=r"model\.onnx"):
        reduced_graph_name("fp32")


def test_entry_round_trips_and_rejects_incomplete_entries():
    original = entry("fp16", parity={"passed": True}, gpu="NVIDIA H100", size_bytes=10)
    data = json.loads(json.dumps(original.to_dict()))
    assert EngineEntry.from_dict(data) == original
    assert EngineEntry.from_dict({**data, "future_field": 1}) == original  # newer writers may add keys
    del data["compute_capability"]
    with pytest.raises(TextcamError, match="compute_capability"):
        EngineEntry.from_dict(data)
    with pytest.raises(TextcamError, match="not a list"):
        engine_entries({"engines": {"a": 1}})


def test_replace_entry_keeps_one_engine_per_key():
    old, other = entry("fp16", profile=(1, 8, 32)), entry("fp32")
    new = entry("fp16", profile=(1, 4, 8))
    result = replace_entry([old, other], new)
    assert result == [other, new]
    assert replace_entry(result, entry("fp16", cc="8.6")) == [other, new, entry("fp16", cc="8.6")]


def test_rebuild_command_is_exact_and_quoted(tmp_path):
    path = tmp_path / "my models" / "r50.textcam"
    command = rebuild_command(path, "fp16", BatchProfile(1, 4, 16), concurrency=4)
    assert command == (f"textcam build-engine '{path}' --precision fp16 --min-batch 1 --opt-batch 4 "
                       "--max-batch 16 --concurrency 4")
    assert rebuild_command("b.textcam", "fp32") == \
        "textcam build-engine b.textcam --precision fp32 --min-batch 1 --opt-batch 8 --max-batch 32"


def test_choose_engine_picks_the_match_for_this_gpu():
    here = ("9.0", "10.8.0.43")
    manifest = manifest_with(entry("fp16"), entry("fp32", cc="8.6"), entry("fp32"), entry("bf16", trt="10.3.0"))
    assert choose_engine("b.textcam", manifest, *here).precision == "fp32"  # fp32 first when unspecified
    assert choose_engine("b.textcam", manifest, *here, precision="fp16") == entry("fp16")
    assert choose_engine("b.textcam", manifest_with(entry("fp16")), *here).precision == "fp16"


def test_no_engine_at_all_names_the_build_command():
    with pytest.raises(TextcamError) as exc:
        choose_engine("b.textcam", {"model": {}, "engines": []}, "9.0", "10.8.0.43")
    assert "has no TensorRT engine" in one_line(exc)
    assert "`textcam build-engine b.textcam --precision fp32 --min-batch 1 --opt-batch 8 --max-batch 32`" in \
        str(exc.value)


def test_engine_for_another_gpu_or_tensorrt_gives_the_rebuild_command():
    manifest = manifest_with(entry("fp16", cc="8.6", trt="10.3.0", profile=(1, 4, 16)))
    with pytest.raises(TextcamError) as exc:
        choose_engine("b.textcam", manifest, "9.0", "10.8.0.43", precision="fp16")
    message = one_line(exc)
    assert "fp16, sm86, TensorRT 10.3.0, batch 1-4-16" in message  # what the bundle has
    assert "this machine has sm90 with TensorRT 10.8.0.43" in message  # what is here
    assert message.endswith("`textcam build-engine b.textcam --precision fp16 --min-batch 1 --opt-batch 4 "
                            "--max-batch 16`")
    with pytest.raises(TextcamError, match=r"TensorRT 10\.3\.0"):  # same GPU, other TensorRT version
        choose_engine("b.textcam", manifest, "8.6", "10.8.0.43")


def test_missing_precision_is_named():
    with pytest.raises(TextcamError) as exc:
        choose_engine("b.textcam", manifest_with(entry("fp32")), "9.0", "10.8.0.43", precision="bf16")
    assert "no bf16 engine for this GPU" in one_line(exc)
    assert "--precision bf16" in str(exc.value)


def test_engines_of_a_replaced_model_are_not_used():
    manifest = manifest_with(entry("fp32"))
    manifest["model"]["sha256"] = "cd" * 32  # the bundle was re-exported since the build
    with pytest.raises(TextcamError) as exc:
        choose_engine("b.textcam", manifest, "9.0", "10.8.0.43")
    assert "another model.onnx" in one_line(exc)


def test_engine_files_are_checked_for_presence_size_and_checksum(default_bundle_copy):
    """The runner reaches a .plan through Bundle.engine_path: present, recorded size, recorded sha256."""
    from textcam.runtime.bundle import Bundle

    (default_bundle_copy / "engines").mkdir()
    plan = default_bundle_copy / "engines" / engine_file_name("fp32", "9.0", "10.8.0.43")
    hint = "rebuild it with `" + rebuild_command(default_bundle_copy, "fp32") + "`"

    def path(described):
        return Bundle.open(default_bundle_copy).engine_path(described, hint)  # a fresh Bundle: no cached check

    plan.write_bytes(b"serialized engine")
    good = entry("fp32", sha256=sha256_file(plan), size_bytes=plan.stat().st_size)
    assert path(good) == plan
    plan.unlink()
    with pytest.raises(TextcamError) as exc:
        path(good)
    assert "is missing" in one_line(exc) and "textcam build-engine" in str(exc.value)
    plan.write_bytes(b"serialized engine, then garbage")
    with pytest.raises(TextcamError, match=r"bytes, the manifest says .*--precision fp32"):
        path(good)
    plan.write_bytes(b"Serialized engine")  # same size, other bytes
    with pytest.raises(TextcamError) as exc:
        path(good)
    assert "checksum differs" in one_line(exc) and "--precision fp32" in str(exc.value)
