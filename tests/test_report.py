"""The HTML report on synthetic studies written through Optuna's API per docs/design.md,
including a check in a real headless browser (Debian's chromium) that the plots render."""

from __future__ import annotations

import html
import json
import random
import re
import shutil
import subprocess
from pathlib import Path

import optuna
import plotly
import pytest
from optuna.trial import TrialState, create_trial

from nas import reference
from nas.counting import count_params
from nas.errors import NasError
from nas.report import (default_report_path, fig_accuracy_vs_params, fig_search_added, scaling_fit, fig_fdpg_path, genome_coords,
                        load_studies, pareto_front, write_report)
from nas.spaces import load_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

RECIPE = {"tag": "e3", "epochs": 3, "optimizer": "sgd"}
EPOCHS = 3


def _genome(rng: random.Random):
    space = load_space("mbconv")
    vec = [rng.choice([8, 12, 16])] + [1] * 4 + [rng.choice([8, 16, 24, 32]) for _ in range(4)] \
        + [rng.choice([1, 2, 4]) for _ in range(4)] + [3] * 4
    return space.from_vector(vec)


def _trial_attrs(genome, value: float, searcher: str, role: str, step: int) -> dict:
    curve = [{"epoch": e, "train_loss": 4.6 - e * 0.3, "val_acc": value * e / EPOCHS}
             for e in range(1, EPOCHS + 1)]
    return {"genome": genome.to_json(), "genome_str": str(genome), "params": count_params(genome),
            "flops": 1000 * count_params(genome), "recipe": RECIPE, "curve": curve, "val_acc": value,
            "wall_time_s": 12.5, "device": "cpu", "searcher": searcher, "role": role, "step": step}


def _add_complete(study: optuna.Study, genome, value: float, searcher: str, role: str, step: int) -> None:
    attrs = _trial_attrs(genome, value, searcher, role, step)
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=value, user_attrs=attrs,
                                 intermediate_values={c["epoch"]: c["val_acc"] for c in attrs["curve"]}))


def _add_failed(study: optuna.Study, reason: str) -> None:
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"failure": reason}))


def _new_study(storage: str, budget: int, searcher: str) -> optuna.Study:
    study = optuna.create_study(storage=storage, study_name=f"mbconv-b{budget}-e3", direction="maximize")
    for key, value in {"space": "mbconv", "family": "mbconv", "budget": budget, "tol": 0.1,
                       "recipe": RECIPE, "searcher": searcher}.items():
        study.set_user_attr(key, value)
    return study


def _set_final(study: optuna.Study, test_acc: float) -> dict:
    best = study.best_trial.user_attrs
    final = {k: best[k] for k in ("genome", "genome_str", "params", "flops", "val_acc", "device")}
    final.update(test_acc=test_acc, epochs=200, wall_time_s=5400.0)
    study.set_user_attr("final", final)
    return final


def make_sweep(path: Path) -> str:
    """A 2-budget sweep: a TPE study at 5k (with a failed trial) and an fdpg study at 10k."""
    storage = f"sqlite:///{path}"
    rng = random.Random(0)
    tpe = _new_study(storage, 5000, "tpe")
    for n in range(6):
        _add_complete(tpe, _genome(rng), 0.10 + 0.01 * rng.random() + 0.005 * n, "tpe", "sample", n)
    _add_failed(tpe, "diverged: loss is nan")
    _set_final(tpe, 0.142)
    fdpg = _new_study(storage, 10000, "fdpg")
    for step in range(4):
        _add_complete(fdpg, _genome(rng), 0.15 + 0.02 * step, "fdpg", "centre", step)
        for _ in range(3):
            _add_complete(fdpg, _genome(rng), 0.12 + 0.03 * rng.random(), "fdpg", "neighbour", step)
    _set_final(fdpg, 0.231)
    hand = _genome(rng)
    fdpg.set_user_attr("baseline:hand", {"genome": hand.to_json(), "genome_str": "conv:hand-design-10k",
                                         "params": count_params(hand), "test_acc": 0.205, "epochs": 200})
    fdpg.set_user_attr("score_noise", {"genome": hand.to_json(), "values": {"0": 0.2, "1": 0.21, "2": 0.19},
                                       "sigma": 0.01})
    return storage


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[str, Path, str]:
    """(storage URL, report path, page text) for the 2-budget sweep."""
    tmp = tmp_path_factory.mktemp("sweep")
    storage = make_sweep(tmp / "nas.db")
    out = write_report(storage, tmp / "reports" / "sweep.html")
    return storage, out, out.read_text(encoding="utf-8")


def plot_ids(page: str) -> list[str]:
    return re.findall(r'<div id="([^"]+)" class="plotly-graph-div"', page)


# ---------------------------------------------------------------- the page's content

def test_sweep_report_has_every_section(sweep):
    storage, out, page = sweep
    assert out.name == "sweep.html"
    for h2 in ("curve", "winners", "added", "shapes", "budgets", "references"):
        assert f'<h2 id="{h2}">' in page
    assert plot_ids(page) == ["accuracy-vs-params", "search-added", "winner-shapes",
                              "progress-mbconv-b5000-e3", "curves-mbconv-b5000-e3",
                              "progress-mbconv-b10000-e3", "curves-mbconv-b10000-e3", "fdpg-mbconv-b10000-e3"]
    assert html.escape(storage) in page
    assert "2 studies · 23 trials (22 complete, 1 fail)" in page
    assert "best per budget 5k:" in page and "10k: 21.00% (test 23.10%)" in page
    assert "diverged: loss is nan" in page  # the failed trial's reason, in its hover text


def test_search_added_compares_winner_and_hand_design(sweep):
    page = sweep[2]
    table = page.split('<h2 id="added">', 1)[1].split("</table>", 1)[0]
    assert "<code>conv:hand-design-10k</code>" in table and "20.50%" in table
    assert "+2.60 pts" in table  # 23.10% winner - 20.50% hand design, same recipe
    fig = fig_search_added(load_studies(sweep[0]))
    bars = {t.name: list(t.y) for t in fig.data}
    assert bars["search winner"] == pytest.approx([14.2, 23.1])
    assert bars["hand design"][0] is None and bars["hand design"][1] == pytest.approx(20.5)


def test_noise_band_and_scaling_fit():
    fit = scaling_fit([(1_000, 0.10), (10_000, 0.28), (100_000, 0.45), (1_000_000, 0.60)])
    assert fit is not None and 0.05 < fit.alpha < 0.2
    assert fit.accuracy(10_000) == pytest.approx(0.28, abs=0.03)
    # error = 0.9 N^-0.1 exactly: the fit recovers it
    exact = scaling_fit([(n, 1 - 0.9 * n ** -0.1) for n in (1e3, 1e4, 1e5, 1e6)])
    assert exact.alpha == pytest.approx(0.1, rel=1e-3) and exact.a == pytest.approx(0.9, rel=1e-3)
    assert scaling_fit([(1_000, 0.1), (2_000, 0.2)]) is None  # two points fit anything


def test_accuracy_plot_has_fit_and_noise(sweep):
    traces = {t.name: t for t in fig_accuracy_vs_params(load_studies(sweep[0])).data}
    band = traces["mbconv-e3: ±2σ seed-to-seed (search score)"]
    assert list(band.error_y.array) == pytest.approx([2.0])  # 2 sigma in accuracy points, at 10k only


def test_plotly_js_is_inlined_and_nothing_is_fetched(sweep):
    page = sweep[2]
    assert page.count(plotly.offline.get_plotlyjs()[:2000]) == 1
    assert not re.search(r"<script[^>]*\ssrc=", page)
    assert not re.search(r"<link[^>]*\shref=", page)


def test_winners_table(sweep):
    storage, _, page = sweep
    table = page.split('<table class="winners">', 1)[1].split("</table>", 1)[0]
    for study in optuna.get_all_study_summaries(storage, include_best_trial=False):
        final = study.user_attrs["final"]
        assert f"<code>{html.escape(final['genome_str'])}</code>" in table
        assert f"{final['params']:,}" in table and f"{final['flops']:,}" in table
        assert f"{100 * final['val_acc']:.2f}%" in table and f"{100 * final['test_acc']:.2f}%" in table
    assert table.count("1 h 30 min") == 2 and table.count("<td>cpu</td>") == 2


def test_reference_curves_are_labelled_with_sources(sweep):
    fig = fig_accuracy_vs_params(load_studies(sweep[0]))
    traces = {t.name: t for t in fig.data}
    ref = traces[reference.REFERENCE_STUDY_SOURCE]
    assert list(ref.x) == [984, 4956, 9636, 50548, 99844, 352388, 491524, 1068740]
    assert ref.y[0] == pytest.approx(10.14) and ref.y[-1] == pytest.approx(49.06)
    for source in ("anilkagak2/DiSK_Distilling_Scaffolded_Knowledge", "chenyaofo/pytorch-cifar-models",
                   "HobbitLong/RepDistiller"):
        assert f"public: {source}" in traces
        assert source in sweep[2]  # also listed under References
    assert sum(len(t.x) for n, t in traces.items() if n.startswith("public: ")) == 9


def test_accuracy_curve_traces(sweep):
    studies = load_studies(sweep[0])
    fig = fig_accuracy_vs_params(studies)
    traces = {t.name: t for t in fig.data}
    assert fig.layout.xaxis.type == "log"
    assert len(traces["mbconv-b5000-e3: trials"].x) == 6 and len(traces["mbconv-b10000-e3: trials"].x) == 16
    best = traces["mbconv-e3: best per budget (search score)"]
    assert list(best.y) == pytest.approx([100 * s.best.value for s in studies])
    assert list(best.x) == [s.best.user_attrs["params"] for s in studies]
    final = traces["mbconv-e3: winners, final test acc"]
    assert list(final.y) == pytest.approx([14.2, 23.1])
    everything = [(t.user_attrs["params"], t.value) for s in studies for t in s.complete]
    front = traces["Pareto frontier (all trials)"]
    expected = pareto_front(everything)
    assert list(front.x) == [p for p, _ in expected]  # parameter counts are exact integers
    assert list(front.y) == pytest.approx([100 * a for _, a in expected])


def test_pareto_front():
    pts = [(100, 0.2), (50, 0.1), (200, 0.15), (300, 0.3), (50, 0.05), (400, 0.3)]
    assert pareto_front(pts) == [(50, 0.1), (100, 0.2), (300, 0.3)]
    assert pareto_front([]) == []


def test_fdpg_path_follows_the_centres(sweep):
    fdpg = [s for s in load_studies(sweep[0]) if s.is_fdpg][0]
    fig = fig_fdpg_path(fdpg)
    traces = {t.name: t for t in fig.data}
    assert list(traces["centre"].x) == [0, 1, 2, 3]
    assert list(traces["centre"].y) == pytest.approx([15, 17, 19, 21])
    assert len(traces["neighbours"].x) == 12
    centres = sorted((t for t in fdpg.complete if t.user_attrs["role"] == "centre"), key=lambda t: t.user_attrs["step"])
    assert list(traces["width3"].y) == [genome_coords(t.user_attrs["genome"])["width3"] for t in centres]
    assert {"stem", "depth1", "width4", "expand2", "kernel4"} <= set(traces)


def test_genome_coords():
    g = load_space("mbconv").genome({"stem": 8, "depth": [1, 2, 1, 1], "width": [4, 16, 16, 32],
                                     "expand": [4, 6, 4, 4], "kernel": [3, 5, 3, 3]})
    coords = genome_coords(g.to_json())
    assert list(coords)[:4] == ["stem", "depth1", "depth2", "depth3"]  # the family's gene order
    assert coords["width2"] == 16 and coords["expand2"] == 6 and coords["kernel4"] == 3 and len(coords) == 17


def test_genome_strings_are_escaped(tmp_path):
    storage = f"sqlite:///{tmp_path / 'x.db'}"
    study = _new_study(storage, 5000, "tpe")
    genome = _genome(random.Random(1))
    attrs = {**_trial_attrs(genome, 0.25, "tpe", "sample", 0), "genome_str": "<b>evil</b>&co"}
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.25, user_attrs=attrs))
    page = write_report(storage, tmp_path / "x.html").read_text()
    assert "<b>evil</b>" not in page
    assert "<code>&lt;b&gt;evil&lt;/b&gt;&amp;co</code>" in page
    assert "25.00%" in page  # stored in [0, 1], shown in %


@pytest.mark.parametrize("trials, says", [
    ([], "no trials yet"),
    ([TrialState.FAIL] * 3, "all 3 trials failed"),
    ([TrialState.RUNNING, TrialState.FAIL], "no completed trials yet (1 running, 1 fail)"),
])
def test_study_without_completed_trials_renders_and_says_so(tmp_path, trials, says):
    storage = f"sqlite:///{tmp_path / 'empty.db'}"
    study = _new_study(storage, 5000, "fdpg")
    for state in trials:
        if state == TrialState.FAIL:
            _add_failed(study, "CUDA out of memory")
        else:
            study.enqueue_trial({})
            study.ask()
    page = write_report(storage, tmp_path / "empty.html").read_text()
    assert f'<p class="status">{html.escape(says)}</p>' in page
    assert f'<td colspan="8" class="note">{html.escape(says)}</td>' in page  # winners table row
    assert plot_ids(page) == ["accuracy-vs-params"]  # the reference curves still show
    assert ("CUDA out of memory" in page) == bool(trials.count(TrialState.FAIL))


def test_storage_without_studies(tmp_path):
    storage = f"sqlite:///{tmp_path / 'none.db'}"
    optuna.storages.RDBStorage(storage)  # creates the schema, no study
    page = write_report(storage, tmp_path / "none.html").read_text()
    assert "No studies in this storage yet." in page
    assert plot_ids(page) == ["accuracy-vs-params"]


def test_missing_storage_file_is_an_error_and_not_created(tmp_path):
    db = tmp_path / "typo.db"
    with pytest.raises(NasError, match="no study storage"):
        write_report(f"sqlite:///{db}", tmp_path / "r.html")
    assert not db.exists() and not (tmp_path / "r.html").exists()


def test_default_report_path():
    assert default_report_path("sqlite:///studies/nas.db") == Path("reports/nas.html")
    assert default_report_path("sqlite:////abs/x/cifar100-sweep.db") == Path("reports/cifar100-sweep.html")
    assert default_report_path("postgresql://u@host/nasdb?sslmode=require") == Path("reports/nasdb.html")


# ---------------------------------------------------------------- in a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium; .ci/run does this)")

# Injected first in <head>, before plotly.js: records every uncaught error, unhandled rejection
# and console.error on <html>, where --dump-dom shows it; data-js-hook proves it ran.
ERROR_HOOK = """<script>(function () {
  var errors = [], root = document.documentElement;
  function note(msg) { errors.push(String(msg)); root.setAttribute("data-js-errors", JSON.stringify(errors)); }
  root.setAttribute("data-js-hook", "on");
  window.addEventListener("error", function (e) { note(e.message || e); });
  window.addEventListener("unhandledrejection", function (e) { note("unhandled rejection: " + e.reason); });
  var consoleError = console.error;
  console.error = function () { note(Array.prototype.join.call(arguments, " ")); consoleError.apply(console, arguments); };
})();</script>"""


def chromium_args(tmp: Path) -> list[str]:
    return [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp / 'chromium-profile'}"]


def render_in_browser(page: Path, tmp: Path) -> tuple[str, list[str]]:
    """The DOM after the page's scripts ran, and the JS errors they raised."""
    probe = tmp / f"probe-{page.name}"
    probe.write_text(page.read_text(encoding="utf-8").replace("<head>", "<head>" + ERROR_HOOK, 1), encoding="utf-8")
    run = subprocess.run(chromium_args(tmp) + ["--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=90)
    dom = run.stdout
    assert run.returncode == 0 and 'data-js-hook="on"' in dom, f"chromium failed:\n{run.stderr[-3000:]}"
    m = re.search(r'data-js-errors="([^"]*)"', dom)
    return dom, json.loads(html.unescape(m.group(1))) if m else []


def rendered_plots(dom: str) -> list[str]:
    """Ids of the graph divs plotly turned into plots (it adds class js-plotly-plot and an svg)."""
    ids = re.findall(r'<div id="([^"]+)" class="[^"]*\bjs-plotly-plot\b', dom)
    return [i for i in ids if re.search(rf'<div id="{re.escape(i)}".*?<svg class="main-svg"', dom, re.S)]


@needs_chromium
def test_report_renders_in_browser(sweep, tmp_path):
    dom, errors = render_in_browser(sweep[1], tmp_path)
    assert errors == []
    assert rendered_plots(dom) == plot_ids(sweep[2])
    assert dom.count('class="main-svg"') >= 2 * len(plot_ids(sweep[2]))  # plot svg + hover layer
    assert 'class="scatterlayer' in dom and "<table" in dom


@needs_chromium
def test_empty_report_renders_in_browser(tmp_path):
    storage = f"sqlite:///{tmp_path / 'e.db'}"
    _new_study(storage, 5000, "tpe")
    dom, errors = render_in_browser(write_report(storage, tmp_path / "e.html"), tmp_path)
    assert errors == [] and rendered_plots(dom) == ["accuracy-vs-params"]
    assert "no trials yet" in dom


@needs_chromium
def test_browser_check_catches_js_errors_and_unrendered_plots(sweep, tmp_path):
    broken = tmp_path / "broken.html"
    # a deliberate error, and one figure whose data is corrupted so plotly never draws it
    page = sweep[2].replace("</body>", "<script>undefinedFunction();</script></body>", 1)
    page, n = re.subn(r'Plotly\.newPlot(\(\s*"accuracy-vs-params")', r"Plotly.newPlotX\1", page)
    assert n == 1
    broken.write_text(page, encoding="utf-8")
    dom, errors = render_in_browser(broken, tmp_path)
    assert any("undefinedFunction" in e for e in errors)
    assert any("newPlotX" in e for e in errors)
    assert "accuracy-vs-params" not in rendered_plots(dom)


def test_report_write_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    storage = f"sqlite:///{tmp_path / 'w.db'}"
    _new_study(storage, 5000, "tpe")
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(NasError, match="report file .* is a folder"):
        write_report(storage, folder)
    assert list(folder.iterdir()) == []

    def full_disk(self, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "replace", full_disk)
    out = tmp_path / "new" / "deeper" / "r.html"
    with pytest.raises(NasError, match="cannot write report file .*: No space left on device"):
        write_report(storage, out)
    assert not (tmp_path / "new").exists()  # neither the half-written page nor the folders made for it
