"""`nas count`, `nas project`, `nas space` as a user runs them."""

import json
import subprocess
import sys

import pytest

from nas.cli import main
from nas.counting import count_params
from nas.spaces import Genome


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_count_json_has_params_flops_genome(capsys):
    code, out, _ = run(capsys, "count", "seed-m6", "--json")
    d = json.loads(out)
    assert code == 0 and d["params"] == 352_388 and d["flops"] > 0
    assert count_params(Genome.from_dict(d["genome"])) == 352_388


def test_count_prints_per_layer_table(capsys):
    code, out, _ = run(capsys, "count", "seed-m4")
    assert code == 0 and "params: 50,548" in out and "#parameters or shape" in out and "#flops" in out


def test_project_json_is_in_band_and_rebuildable(capsys, tmp_path):
    code, out, _ = run(capsys, "project", "seed-m8", "--budget", "50000", "--json")
    d = json.loads(out)
    assert code == 0 and 45_000 <= d["params"] <= 50_000
    f = tmp_path / "g.json"
    f.write_text(json.dumps(d["genome"]))
    code, out, _ = run(capsys, "count", str(f), "--json")
    assert json.loads(out)["params"] == d["params"]


def test_space_list_and_show(capsys):
    code, out, _ = run(capsys, "space", "list")
    assert code == 0 and "mbconv" in out and "conv" in out
    code, out, _ = run(capsys, "space", "show", "mbconv")
    assert code == 0 and "seed-m8" in out and "1,068,740" in out and "expand" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["count", "resnet18"], "unknown preset 'resnet18'"),
        (["count", '{"family": "vit", "genes": {}}'], "unknown family 'vit'"),
        (["count", "{oops"], "malformed JSON"),
        (["project", "seed-m4", "--budget", "0"], "budget must be"),
        (["project", "seed-m4", "--budget", "-100"], "budget must be"),
        (["project", "seed-m4", "--budget", "lots"], "budget must be"),
        (["project", "seed-m4", "--budget", "100"], "smallest model has"),
        (["project", "seed-m4", "--budget", "5000", "--space", "conv"], "cannot be projected in space 'conv'"),
        (
            ["project", '{"family": "conv", "genes": {"depth": [9,1,1,1], "width": [8,8,8,8]}}', "--budget", "5000"],
            "outside space 'conv'",
        ),
        (["space", "show", "nope"], "unknown space 'nope'"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, message):
    # a real process, so a traceback would show up on stderr
    p = subprocess.run([sys.executable, "-m", "nas.cli", *argv], capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    assert message in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_space_list_and_show_print_every_description(capsys):
    from nas.spaces import BUILTIN_SPACES_DIR, load_space

    code, listing, _ = run(capsys, "space", "list")
    for f in sorted(BUILTIN_SPACES_DIR.glob("*.toml")):
        description = load_space(f).description
        assert description and "\n" not in description, f"{f} needs a one-line description"
        assert description in listing
        code, shown, _ = run(capsys, "space", "show", f.stem)
        assert code == 0 and f"about:   {description}" in shown


def test_a_search_winner_is_counted_and_projected_by_study_and_trial(capsys, tmp_path):
    import optuna

    from nas.spaces import load_space

    storage = f"sqlite:///{tmp_path / 's.db'}"
    g = load_space("conv").genome({"depth": [1, 2, 1, 1], "width": [16, 32, 64, 128]})
    study = optuna.create_study(storage=storage, study_name="conv-b200000-e1", direction="maximize")
    study.enqueue_trial({}, user_attrs={"genome": g.to_json()})
    study.tell(study.ask(), 0.5)
    code, out, _ = run(capsys, "count", "conv-b200000-e1#0", "--storage", storage, "--json")
    assert code == 0 and json.loads(out)["genome_str"] == "conv:16x1|32x2|64x1|128x1"
    code, out, _ = run(capsys, "project", "conv-b200000-e1#0", "--storage", storage, "--budget", "50k", "--json")
    assert code == 0 and 45_000 <= json.loads(out)["params"] <= 50_000
    code, _, err = run(capsys, "count", "conv-b200000-e1#3", "--storage", storage)
    assert code == 2 and err == "nas: error: study 'conv-b200000-e1' has no trial #3 (trials #0..#0)\n"


def test_printed_genomes_are_accepted_back(capsys):
    code, out, _ = run(capsys, "project", "seed-m8", "--budget", "1.5e5")
    printed = out.splitlines()[1].split()[1]  # "to:     <genome>  (...)"
    code, out, _ = run(capsys, "count", printed, "--json")
    assert code == 0 and 135_000 <= json.loads(out)["params"] <= 150_000 and json.loads(out)["genome_str"] == printed
