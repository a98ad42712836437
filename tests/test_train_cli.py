"""The train / eval / generate commands: output, and one clear line for each kind of bad input."""
import json
import os

import numpy as np
import pytest

from elmanlab.cli import main
from elmanlab.data import embedded_corpus_path, open_bytes

TINY = ["--dim", "32", "--depth", "1", "--seq-len", "32", "--batch-size", "4", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("clidata")
    os.environ.setdefault("ELMANLAB_CACHE", str(d / "cache"))
    p = d / "text.txt"
    p.write_bytes(np.asarray(open_bytes(embedded_corpus_path(), progress=False)[:200_000]).tobytes())
    return p


@pytest.fixture(scope="module")
def run_dir(text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("clirun") / "r"
    with pytest.raises(SystemExit) as e:
        main(["train", "e1", *TINY, "--data", str(text_file), "--steps", "20", "--lr", "3e-3",
              "--eval-bytes", "2048", "--out", str(out)])
    assert e.value.code == 0
    return out


def run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    cap = capsys.readouterr()
    return e.value.code, cap.out, cap.err


def assert_one_line_error(code, err, *words):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_train_prints_a_summary(run_dir, capsys):
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "completed" and s["steps"] == 20 and "val_bpb" in s
    from elmanlab.cli.train import print_summary
    print_summary(s)
    out = capsys.readouterr().out
    assert "bits/byte" in out and "bytes/s" in out and "nats/byte" in out


def test_eval_json_is_deterministic_and_updates_the_summary(run_dir, capsys):
    code, out, _ = run(["eval", run_dir, "--json", "--bytes", 3000, "--device", "cpu"], capsys)
    assert code == 0
    a = json.loads(out)
    code, out, _ = run(["eval", run_dir, "--json", "--bytes", 3000, "--device", "cpu", "--batch-size", 3], capsys)
    b = json.loads(out)
    assert a["val_bytes"] == b["val_bytes"] == (3000 - 1) // 32 * 32
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)
    assert a["val_bpb"] == pytest.approx(a["val_loss"] / np.log(2))
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["val_bpb"] == b["val_bpb"] and s["val_bytes"] == b["val_bytes"]
    code, out, _ = run(["eval", run_dir, "--bytes", 3000, "--device", "cpu"], capsys)
    assert code == 0 and "bits/byte" in out


def test_generate_prints_prompt_and_continuation(run_dir, capsys):
    code, out, _ = run(["generate", run_dir, "--prompt", "ROMEO:", "--max-bytes", 40, "--seed", 1,
                        "--device", "cpu"], capsys)
    assert code == 0 and out.startswith("ROMEO:")
    code, out2, _ = run(["generate", run_dir, "--prompt", "ROMEO:", "--max-bytes", 40, "--seed", 1,
                         "--device", "cpu", "--top-k", 5], capsys)
    assert code == 0
    code, out3, _ = run(["generate", run_dir, "--prompt", "ROMEO:", "--max-bytes", 40, "--seed", 1,
                         "--device", "cpu"], capsys)
    assert out3 == out
    # a prompt that is not valid UTF-8 (raw bytes from the shell arrive as surrogate escapes)
    code, out4, _ = run(["generate", run_dir, "--prompt", "\udcffROMEO", "--max-bytes", 5, "--device", "cpu"], capsys)
    assert code == 0 and out4.startswith("\ufffdROMEO")
    # a bad option is one error line and nothing on stdout (the prompt is not echoed first)
    for flag, val in (("--top-k", 0), ("--temperature", -1), ("--max-bytes", -2)):
        code, out5, err = run(["generate", run_dir, "--prompt", "ROMEO:", flag, val, "--device", "cpu"], capsys)
        assert_one_line_error(code, err, flag)
        assert out5 == ""


@pytest.mark.parametrize("content,words", [
    (None, ["does not exist"]),
    (b"", ["is empty"]),
    (b"hello world\n" * 10, ["too short", "--seq-len"]),
])
def test_bad_data(tmp_path, capsys, content, words):
    p = tmp_path / "d.txt"
    if content is not None:
        p.write_bytes(content)
    code, _, err = run(["train", "e1", *TINY, "--data", p, "--steps", 5, "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, *words)
    assert not (tmp_path / "o").exists()


def test_sequence_longer_than_data(text_file, tmp_path, capsys):
    v = tmp_path / "v.txt"
    v.write_bytes(b"x" * 100)
    code, _, err = run(["train", "e1", "--dim", 32, "--depth", 1, "--data", text_file, "--val-data", v,
                        "--seq-len", 512, "--steps", 5, "--out", tmp_path / "o", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "validation file", "--seq-len 512")
    code, _, err = run(["train", "e1", "--dim", 32, "--depth", 1, "--data", text_file,
                        "--seq-len", 400_000, "--steps", 5, "--out", tmp_path / "o", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "--seq-len")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("budget,words", [
    (["--steps", "0"], ["--steps must be a positive"]),
    (["--steps", "-3"], ["--steps must be a positive"]),
    (["--minutes", "0"], ["--minutes must be positive"]),
    (["--steps", "5", "--minutes", "1"], ["one budget"]),
])
def test_bad_budget(text_file, tmp_path, capsys, budget, words):
    code, _, err = run(["train", "e1", *TINY, "--data", text_file, *budget, "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, *words)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags,words", [
    (["--cuda-graph"], ["--cuda-graph needs a CUDA device", "drop --cuda-graph"]),
    (["--cuda-graph", "--compile"], ["--cuda-graph and --compile"]),
])
def test_cuda_graph_refusals(text_file, tmp_path, capsys, flags, words):
    code, _, err = run(["train", "e1", *TINY, "--data", text_file, "--steps", "3", *flags, "--out", tmp_path / "o"],
                       capsys)
    assert_one_line_error(code, err, *words)
    assert not (tmp_path / "o").exists()


def _trained_then_edited(text_file, out, capsys, steps, edit):
    """A short run with checkpoints, then ``edit(config)`` applied to its config.json."""
    code, _, _ = run(["train", "e1", *TINY, "--data", text_file, "--steps", steps, "--eval-bytes", "0",
                      "--checkpoint-every", steps // 2, "--out", out], capsys)
    assert code == 0
    conf = json.loads((out / "config.json").read_text())
    edit(conf)
    (out / "config.json").write_text(json.dumps(conf))


def test_resume_switches_cuda_graph(text_file, tmp_path, capsys):
    """--cuda-graph is how a run runs, not what it computes: --resume may switch it either way."""
    out = tmp_path / "g"
    # as written by a GPU run with --cuda-graph
    _trained_then_edited(text_file, out, capsys, 4, lambda c: c["train"].update(cuda_graph=True))
    code, _, err = run(["train", "--resume", out, "--steps", "6"], capsys)
    assert_one_line_error(code, err, "--cuda-graph needs a CUDA device", "--no-cuda-graph")
    code, _, err = run(["train", "--resume", out, "--steps", "6", "--no-cuda-graph", "--json"], capsys)
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["steps"] == 6


def test_resume_of_something_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    code, _, err = run(["train", "--resume", tmp_path / "plain"], capsys)
    assert_one_line_error(code, err, "not a run folder")
    code, _, err = run(["train", "--resume", tmp_path / "missing"], capsys)
    assert_one_line_error(code, err, "does not exist")
    for cmd in (["eval", tmp_path / "plain"], ["generate", tmp_path / "plain"]):
        code, _, err = run(cmd, capsys)
        assert_one_line_error(code, err, "not a run folder")


def test_resume_without_checkpoints_and_with_model_flags(run_dir, capsys):
    before = (run_dir / "summary.json").read_bytes()
    code, _, err = run(["train", "--resume", run_dir, "--steps", 40], capsys)
    assert_one_line_error(code, err, "no complete checkpoint", "--checkpoint-every")
    code, _, err = run(["train", "e1", "--resume", run_dir], capsys)
    assert_one_line_error(code, err, "drop MODEL")
    # training settings come from the run's config.json too: a new --lr is refused, not ignored
    code, _, err = run(["train", "--resume", run_dir, "--lr", "0.01", "--seq-len", 64], capsys)
    assert_one_line_error(code, err, "drop --seq-len, --lr")
    assert (run_dir / "summary.json").read_bytes() == before


def test_unwritable_out(text_file, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = run(["train", "e1", *TINY, "--data", text_file, "--steps", 5, "--out", blocker / "sub"], capsys)
    assert_one_line_error(code, err, "cannot write to --out")
    code, _, err = run(["train", "e1", *TINY, "--data", text_file, "--steps", 5, "--out", blocker], capsys)
    assert_one_line_error(code, err, "is a file")
    assert blocker.read_text() == "not a folder"


def test_out_holding_a_run_is_not_touched(run_dir, text_file, capsys):
    snapshot = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    code, _, err = run(["train", "e1", *TINY, "--data", text_file, "--steps", 5, "--out", run_dir], capsys)
    assert_one_line_error(code, err, "already holds a run", "--resume")
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == snapshot


def test_no_model_named(capsys):
    code, _, err = run(["train"], capsys)
    assert_one_line_error(code, err, "name a model")


def test_train_help_explains_every_flag(capsys):
    code, out, _ = run(["train", "--help"], capsys)
    assert code == 0
    for flag in ("--data", "--val-data", "--steps", "--minutes", "--batch-size", "--seq-len", "--lr",
                 "--weight-decay", "--warmup-steps", "--grad-clip", "--seed", "--device", "--checkpoint-every",
                 "--resume", "--out", "--eval-bytes", "--compile", "--cuda-graph"):
        assert flag in out


def test_config_edited_after_training_is_one_line(text_file, tmp_path, capsys):
    out = tmp_path / "edited"
    _trained_then_edited(text_file, out, capsys, 10, lambda c: c["model"].update(dim=40))
    code, _, err = run(["eval", out, "--device", "cpu"], capsys)
    assert code == 2 and "do not match the model in config.json" in err and "Traceback" not in err
    code, _, err = run(["train", "--resume", out, "--steps", "15"], capsys)
    assert code == 2 and "does not match the run's config.json" in err and "Traceback" not in err
