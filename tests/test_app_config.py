"""Run configuration: sections defined once, composed by every job, bound by one preset for all."""

import dataclasses
import glob
import os

import gin
import pytest

from whisper_t5x.app import build, gin_config
from whisper_t5x.app.config import (
    DecodeSection, GroupingSection, ModelSection, PartitionSection, ServeConfig, TranscribeConfig,
)
from whisper_t5x.app.label.config import LabelConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = (ModelSection, PartitionSection, DecodeSection, GroupingSection)
JOBS = (TranscribeConfig, LabelConfig, ServeConfig)
PRESETS = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(REPO, "configs",
                                                                                           "hardware", "*.gin")))
LABEL_REQUIRED = ["LabelConfig.dataset = 'd'", "LabelConfig.output_dir = 'o'"]


@pytest.fixture(autouse=True)
def _clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _names(cls):
    return {f.name for f in dataclasses.fields(cls)}


def test_job_configs_compose_the_sections_and_copy_no_field():
    section_fields = set().union(*(_names(s) for s in SECTIONS))
    for job in JOBS:
        types = {f.name: f.type for f in dataclasses.fields(job)}
        shared = [n for n in ("model", "partition", "decode", "grouping") if n in types]
        assert {types[n] for n in shared} >= {"ModelSection", "PartitionSection", "DecodeSection"}
        assert not (_names(job) & section_fields), f"{job.__name__} re-declares {_names(job) & section_fields}"


@pytest.mark.parametrize("preset", PRESETS)
def test_one_preset_configures_transcribe_label_and_serve_alike(preset):
    assert set(PRESETS) >= {"cpu", "gpu", "tpu_v4_8", "tpu_v5e"}
    gin_config.parse_gin(["runs/transcribe", f"hardware/{preset}"])
    transcribe = gin_config.make(TranscribeConfig)
    gin_config.parse_gin(["runs/label", f"hardware/{preset}"], extra_bindings=LABEL_REQUIRED)
    label = gin_config.make(LabelConfig)
    gin_config.parse_gin(["runs/serve", f"hardware/{preset}"])
    serve = gin_config.make(ServeConfig)
    assert transcribe.model == label.model and transcribe.partition == label.partition
    assert (serve.model.dtype, serve.partition) == (transcribe.model.dtype, transcribe.partition)
    assert serve.max_batch_size == transcribe.partition.batch_size
    assert transcribe.grouping.group_size == label.grouping.group_size
    assert transcribe.partition.batch_size is not None and transcribe.partition.partitioner is not None
    expected_dtype = "float32" if preset == "cpu" else "bfloat16"
    assert transcribe.model.dtype == expected_dtype


def test_unknown_or_bad_section_values_are_named(capsys):
    from whisper_t5x import main as cli

    rc = cli.main(["whisper-t5x", "transcribe", REPO, "--gin.ModelSection.bogus_knob=3"])
    err = capsys.readouterr().err
    assert rc == 2 and "bogus_knob" in err and "gin" in err
    rc = cli.main(["whisper-t5x", "transcribe", REPO, "--gin.PartitionSection.batch_size=0"])
    err = capsys.readouterr().err
    assert rc == 2 and "PartitionSection.batch_size must be a positive integer" in err
    gin_config.parse_gin([], ["GroupingSection.group_size = 2.5"])
    with pytest.raises(gin_config.GinConfigError, match="GroupingSection.group_size"):
        gin_config.make(TranscribeConfig)
    for bad, match in ((dict(dtype="int8"), "ModelSection.dtype"),):
        with pytest.raises(ValueError, match=match):
            ModelSection(**bad)
    with pytest.raises(ValueError, match="DecodeSection.task"):
        DecodeSection(task="summarize")
    with pytest.raises(ValueError, match="temperatures"):
        DecodeSection(temperature=(-1.0,))


def test_flags_bind_section_fields(tmp_path, capsys):
    from whisper_t5x import main as cli
    from tests.test_cli import FakePipeline, write_wav

    write_wav(tmp_path / "a.wav", 0.5)
    FakePipeline.instances.clear()
    FakePipeline.calls.clear()
    rc = cli.main(["whisper-t5x", "transcribe", str(tmp_path / "a.wav"), "--output_dir", str(tmp_path / "o"),
                   "--model", "tiny.en", "--dtype", "bfloat16", "--batch_size", "2", "--task", "translate",
                   "--timestamps", "--gin.PartitionSection.pipeline='tests.test_cli:FakePipeline'"])
    assert rc == 0, capsys.readouterr().err
    [pipe] = FakePipeline.instances
    assert pipe.init["checkpoint"] == "tiny.en" and pipe.init["batch_size"] == 2
    assert "bfloat16" in str(pipe.init["dtype"])
    [call] = FakePipeline.calls
    assert call["task"] == "translate" and call["timestamps"] is True and call["batch_size"] == 2
    config = (tmp_path / "o" / "config.gin").read_text()
    for line in ("ModelSection.name = 'tiny.en'", "ModelSection.dtype = 'bfloat16'", "PartitionSection.batch_size = 2",
                 "DecodeSection.task = 'translate'", "DecodeSection.timestamps = True"):
        assert line in config


def test_label_flags_bind_the_same_sections():
    from whisper_t5x.app.label import flags

    targets = dict(flags.FLAG_FIELDS)
    assert targets["model"] == "ModelSection.name" and targets["batch_size"] == "PartitionSection.batch_size"
    assert targets["dtype"] == "ModelSection.dtype" and targets["group_size"] == "GroupingSection.group_size"
    gin_config.parse_gin(["runs/label", "hardware/gpu"], extra_bindings=LABEL_REQUIRED + [
        gin_config.flag_binding(targets["batch_size"], 8), gin_config.flag_binding(targets["model"], "tiny.en")])
    cfg = gin_config.make(LabelConfig)
    assert (cfg.partition.batch_size, cfg.model.name, cfg.model.dtype) == (8, "tiny.en", "bfloat16")


def test_transcribe_kwargs():
    d = DecodeSection()
    kw = d.transcribe_kwargs()
    assert "long_form" not in kw and kw["return_timestamps"] is False
    assert kw["generate_kwargs"] == {"temperature": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0), "compression_ratio_threshold": 2.4,
                                     "logprob_threshold": -1.0, "no_speech_threshold": 0.6}
    d = DecodeSection(word_timestamps=True, long_form="sequential", temperature=0.0,
                      generate_kwargs={"num_beams": 2, "logprob_threshold": None})
    kw = d.transcribe_kwargs()
    assert kw["return_timestamps"] == "word" and kw["long_form"] == "sequential"
    assert kw["generate_kwargs"]["temperature"] == 0.0 and kw["generate_kwargs"]["num_beams"] == 2
    assert kw["generate_kwargs"]["logprob_threshold"] is None  # generate_kwargs applies over the fields
    assert DecodeSection(timestamps=False).transcribe_kwargs(timestamps=True)["return_timestamps"] is True


def test_the_pipeline_accepts_every_section_default():
    """The fallback fields are the pipeline's own generate_kwargs, with its defaults."""
    from whisper_t5x.longform.fallback import FallbackConfig
    from whisper_t5x.pipeline import _GENERATE_KEYS, LONG_FORM_MODES

    gk = DecodeSection().decoding_options()
    assert set(gk) <= _GENERATE_KEYS
    fb = FallbackConfig()
    assert (gk["temperature"], gk["compression_ratio_threshold"], gk["logprob_threshold"],
            gk["no_speech_threshold"]) == (fb.temperatures, fb.compression_ratio_threshold, fb.logprob_threshold,
                                           fb.no_speech_threshold)
    for mode in LONG_FORM_MODES:
        assert DecodeSection(long_form=mode).long_form == mode


def test_batch_size_is_checked_against_the_data_axis():
    class FourWay:
        data_mesh_size = 4

    build.check_batch_size(8, FourWay())
    build.check_batch_size(None, FourWay())
    build.check_batch_size(3, None)
    with pytest.raises(ValueError, match="multiple of the data-parallel size 4"):
        build.check_batch_size(6, FourWay())
    seen = {}

    def factory(**kw):
        seen.update(kw)
        return "pipe"

    config = TranscribeConfig(partition=PartitionSection(pipeline=factory, batch_size=6,
                                                         partitioner=lambda: FourWay()))
    with pytest.raises(build.PipelineBuildError, match="cannot set up model 'base'.*multiple"):
        build.load_pipeline(config)
    assert not seen  # checked before the pipeline (and its model) is built
    config = TranscribeConfig(partition=PartitionSection(pipeline=factory, batch_size=8, partitioner=FourWay))
    assert build.load_pipeline(config) == "pipe" and seen["batch_size"] == 8


def test_app_modules_are_small():
    for path in glob.glob(os.path.join(REPO, "whisper_t5x", "app", "**", "*.py"), recursive=True):
        with open(path, encoding="utf-8") as f:
            assert sum(1 for _ in f) <= 600, path


def test_serve_flags_bind_section_fields(monkeypatch):
    from whisper_t5x.app.serving.server import FLAG_FIELDS, settings_from_args

    monkeypatch.delenv("WHISPER_T5X_API_KEY", raising=False)
    assert FLAG_FIELDS["batch_size"] == "PartitionSection.batch_size" and FLAG_FIELDS["model"] == "ModelSection.name"
    s = settings_from_args(["--gin_file", "hardware/tpu_v5e", "--model", "tiny.en", "--dtype", "float32",
                            "--chunk_length_s", "20", "--no_warmup"])
    assert (s.model.name, s.model.dtype, s.partition.batch_size, s.max_batch_size) == ("tiny.en", "float32", 64, 64)
    assert s.decode.chunk_length_s == 20.0 and s.warmup is False
    assert settings_from_args([]).max_batch_size == 8  # no preset: the server's default batch
    with pytest.raises(gin_config.GinConfigError, match="PartitionSection.batch_size"):
        settings_from_args(["--batch_size", "0"])


@pytest.mark.parametrize("bad, match", [
    (dict(chunk_length_s=100), r"DecodeSection.chunk_length_s must be in \(0, 30\]"),
    (dict(chunk_length_s=0), r"DecodeSection.chunk_length_s must be in \(0, 30\]"),
    (dict(chunk_length_s=float("nan")), "DecodeSection.chunk_length_s must be a finite number"),
    (dict(chunk_length_s="30"), "DecodeSection.chunk_length_s must be a finite number"),
    (dict(stride_length_s=15), "DecodeSection.stride_length_s must be >= 0 and less than half"),
    (dict(chunk_length_s=10, stride_length_s=5), "DecodeSection.stride_length_s must be >= 0 and less than half"),
    (dict(stride_length_s=-1), "DecodeSection.stride_length_s must be >= 0"),
    (dict(language="klingon"), "DecodeSection.language: unknown language 'klingon'.*`whisper-t5x languages`"),
    (dict(language=""), "DecodeSection.language: unknown language ''"),
    (dict(language=3), "DecodeSection.language: unknown language 3"),
])
def test_decode_section_checks_windows_and_language_before_any_model(bad, match):
    with pytest.raises(ValueError, match=match):
        DecodeSection(**bad)


def test_decode_section_accepts_what_the_pipeline_accepts():
    for ok in (dict(chunk_length_s=30), dict(chunk_length_s=10.5, stride_length_s=2), dict(stride_length_s=0),
               dict(language="en"), dict(language="German"), dict(language="<|fr|>"), dict(language="mandarin"),
               dict(language="yue"), dict(language=None)):
        d = DecodeSection(**ok)
        assert d.language == ok.get("language")  # kept as given; the pipeline maps it to a code


@pytest.mark.parametrize("job, files, required", [
    (TranscribeConfig, ["runs/transcribe"], []), (LabelConfig, ["runs/label"], LABEL_REQUIRED),
    (ServeConfig, ["runs/serve"], []),
])
def test_bad_decode_values_fail_every_job_config_by_name(job, files, required):
    for binding, match in (("DecodeSection.chunk_length_s = 100", "DecodeSection.chunk_length_s"),
                           ("DecodeSection.language = 'klingon'", "unknown language 'klingon'")):
        gin_config.parse_gin(files, [binding], extra_bindings=required)
        with pytest.raises(gin_config.GinConfigError, match=match):
            gin_config.make(job)


def test_timed_output_formats_ask_for_segment_timestamps():
    """srt/vtt/tsv cues are timed segments: asking for them turns segment timestamps on."""
    for formats, expected in (("txt", False), ("srt", True), ("txt,vtt", True), ("tsv", True), ("json", False)):
        config = TranscribeConfig(output_formats=formats)
        assert config.decode.return_timestamps is expected, formats
    words = TranscribeConfig(output_formats="srt", decode=DecodeSection(word_timestamps=True))
    assert words.decode.return_timestamps == "word"
    off = TranscribeConfig(output_formats="srt", decode=DecodeSection(timestamps=False))  # --notimestamps
    assert off.decode.return_timestamps is False


def test_multi_host_partitioner_is_local_and_absent_for_one_device(monkeypatch):
    import jax

    from whisper_t5x.app.build import build_partitioner

    cpu = jax.devices("cpu")[0]
    monkeypatch.setattr(jax, "local_devices", lambda *a, **k: [cpu])
    assert build_partitioner(None, process_count=2) is None  # one device: no mesh, the slot engine decodes
    assert build_partitioner(None, process_count=1) is None
    seen = []
    assert build_partitioner(lambda devices: seen.append(devices) or "made", process_count=2) == "made"
    assert seen == [[cpu]]  # a configured factory still gets the local devices


def test_config_weight_dtypes_match_the_models():
    from whisper_t5x.app.config import WEIGHT_DTYPES
    from whisper_t5x.model import quantize

    assert set(WEIGHT_DTYPES) == set(quantize.WEIGHT_DTYPES)  # config.py cannot import jax: kept in step by hand
