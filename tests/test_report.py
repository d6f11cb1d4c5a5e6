"""The HTML report on studies written by nas itself (searches with a stand-in for training, and
the sweep's record of final trainings), so the report reads exactly what the writers write;
including a check in a real headless browser (Debian's chromium) that the plots render."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import optuna
import plotly
import pytest
from conftest import PlantedTraining, use_fixture_checksums
from optuna.trial import TrialState

from nas import reference
from nas.counting import count_params
from nas.errors import NasError
from nas.evaluator import EvaluationFailed, Evaluator
from nas.figures import (
    fig_accuracy_vs_params,
    fig_fdpg_path,
    fig_search_added,
    genome_coords,
    pareto_front,
    scaling_fit,
)
from nas.report import default_report_path, write_report
from nas.search import SearchConfig, search
from nas.spaces import load_space
from nas.study import open_study, trial_genome
from nas.study_view import budget_str, load_studies
from nas.sweep import record_final_training
from nas.training import Recipe

optuna.logging.set_verbosity(optuna.logging.WARNING)

RECIPE = Recipe(epochs=3)
FINAL_RECIPE = Recipe(epochs=200)


def run_search(storage: str, data_dir: Path, budget: int, searcher: str, trials: int, **options) -> optuna.Study:
    """`nas search` of the mbconv space as the CLI runs it (its own training objective, the hand
    design first, the seed-to-seed noise measured), on the fixture data."""
    config = SearchConfig(searcher, trials=trials, val_size=200, pruner="none", **options)
    result = search("mbconv", budget, config, storage=storage, data_dir=data_dir, recipe=RECIPE, progress=False)
    return optuna.load_study(study_name=result.study_name, storage=storage)


def hand_design(study: optuna.Study):
    """The space's hand design projected to the budget: every search's first trial."""
    return trial_genome(min(study.trials, key=lambda t: t.number))


def record_final(study: optuna.Study, attr: str, genome, test_acc: float, extra: dict | None = None) -> dict:
    """Record a final training of `genome` as `nas sweep` does, with a planted test accuracy."""
    curve = [{"epoch": e, "train_loss": 4.0 / e, "val_acc": None} for e in range(1, FINAL_RECIPE.epochs + 1)]
    summary = {
        "run_dir": f"runs/final/{study.study_name}/{attr}",
        "params": count_params(genome),
        "val_acc": None,
        "test_acc": test_acc,
        "epochs": FINAL_RECIPE.epochs,
        "train_size": 50_000,
        "wall_time_s": 5400.0,
        "device": "cpu",
        "curve": curve,
    }
    return record_final_training(study, attr, genome, FINAL_RECIPE, summary, extra or {})


def record_winner(study: optuna.Study, test_acc: float) -> dict:
    best = study.best_trial
    return record_final(
        study, "final", trial_genome(best), test_acc, {"trial": best.number, "search_val_acc": best.value}
    )


def make_sweep(path: Path, data_dir: Path) -> str:
    """A 2-budget sweep of one space: a TPE study at 5k (one trial diverges) and an fdpg study at
    10k, each winner final-trained, the 10k hand design too."""
    storage = f"sqlite:///{path}"
    with pytest.MonkeyPatch.context() as mp:
        # trainings 1-2 measure the noise of the score, 3 is the hand design: the second trial diverges
        mp.setattr("nas.objective.train", PlantedTraining(fail_on=4))
        tpe = run_search(storage, data_dir, 5000, "tpe", trials=7)
        mp.setattr("nas.objective.train", PlantedTraining())
        fdpg = run_search(storage, data_dir, 10_000, "fdpg", trials=30)
    record_winner(tpe, 0.142)
    record_winner(fdpg, 0.231)
    record_final(fdpg, "baseline:hand", hand_design(fdpg), 0.205)
    return storage


def empty_study(storage: str, searcher: str = "tpe") -> optuna.Study:
    """A search's study before its first trial."""
    return open_study(storage, load_space("mbconv"), 5000, RECIPE, tol=0.1, searcher=searcher)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, _cifar_files) -> tuple[str, Path, str]:
    """(storage URL, report path, page text) for the 2-budget sweep."""
    tmp = tmp_path_factory.mktemp("sweep")
    root, md5 = _cifar_files
    with pytest.MonkeyPatch.context() as mp:
        use_fixture_checksums(mp, md5)
        storage = make_sweep(tmp / "nas.db", root)
    out = write_report(storage, tmp / "reports" / "sweep.html")
    return storage, out, out.read_text(encoding="utf-8")


def studies_of(storage: str) -> list[optuna.Study]:
    """The sweep's studies as Optuna reads them, by budget."""
    studies = [
        optuna.load_study(study_name=s.study_name, storage=storage)
        for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
    ]
    return sorted(studies, key=lambda s: s.user_attrs["budget"])


def plot_ids(page: str) -> list[str]:
    return re.findall(r'<div id="([^"]+)" class="plotly-graph-div"', page)


# ---------------------------------------------------------------- the page's content


def test_sweep_report_has_every_section(sweep):
    storage, out, page = sweep
    small, large = studies_of(storage)
    assert out.name == "sweep.html"
    for h2 in ("curve", "winners", "added", "shapes", "budgets", "references"):
        assert f'<h2 id="{h2}">' in page
    assert plot_ids(page) == [
        "accuracy-vs-params",
        "search-added",
        "winner-shapes",
        f"progress-{small.study_name}",
        f"curves-{small.study_name}",
        f"progress-{large.study_name}",
        f"curves-{large.study_name}",
        f"fdpg-{large.study_name}",
    ]
    assert html.escape(storage) in page
    trials = small.trials + large.trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(trials) == len(complete) + 1  # the diverged trial
    assert f"2 studies · {len(trials)} trials ({len(complete)} complete, 1 fail)" in page
    assert (
        f"best per budget 5k: {100 * small.best_value:.2f}% (test 14.20%), "
        f"10k: {100 * large.best_value:.2f}% (test 23.10%)"
    ) in page
    assert "loss became nan at epoch" in page  # the failed trial's reason, in its hover text


def test_search_added_compares_winner_and_hand_design(sweep):
    page = sweep[2]
    hand = studies_of(sweep[0])[1].user_attrs["baseline:hand"]
    table = page.split('<h2 id="added">', 1)[1].split("</table>", 1)[0]
    assert f"<code>{html.escape(hand['genome_str'])}</code> ({hand['params']:,})</td><td>20.50%</td>" in table
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
    exact = scaling_fit([(n, 1 - 0.9 * n**-0.1) for n in (1e3, 1e4, 1e5, 1e6)])
    assert exact.alpha == pytest.approx(0.1, rel=1e-3) and exact.a == pytest.approx(0.9, rel=1e-3)
    assert scaling_fit([(1_000, 0.1), (2_000, 0.2)]) is None  # two points fit anything


def test_accuracy_plot_has_fit_and_noise(sweep):
    studies = studies_of(sweep[0])
    traces = {t.name: t for t in fig_accuracy_vs_params(load_studies(sweep[0])).data}
    band = traces[f"{series(studies[0])}: ±2σ seed-to-seed (search score)"]
    sigmas = [s.user_attrs["score_noise"]["sigma"] for s in studies]  # measured by each search
    # seeds 1 and 2 beside the hand design's own trial (seed 0), for TPE's queued start and fdpg's first centre
    assert [sorted(s.user_attrs["score_noise"]["values"]) for s in studies] == [["0", "1", "2"]] * 2
    assert all(sigma > 0 for sigma in sigmas)
    assert list(band.error_y.array) == pytest.approx([200 * sigma for sigma in sigmas])  # 2 sigma, in points
    assert list(band.x) == [s.best_trial.user_attrs["params"] for s in studies]


def test_plotly_js_is_inlined_and_nothing_is_fetched(sweep):
    page = sweep[2]
    assert page.count(plotly.offline.get_plotlyjs()[:2000]) == 1
    assert not re.search(r"<script[^>]*\ssrc=", page)
    assert not re.search(r"<link[^>]*\shref=", page)


def test_winners_table(sweep):
    storage, _, page = sweep
    table = page.split('<table class="winners">', 1)[1].split("</table>", 1)[0]
    rows = table.split("<tr>")[2:]
    assert len(rows) == 2
    for study, row in zip(studies_of(storage), rows):
        final = study.user_attrs["final"]
        assert f'<a href="#study-{study.study_name}">{study.study_name}</a>' in row
        assert f"<code>{html.escape(final['genome_str'])}</code>" in row
        # no always-empty val acc column (a final training holds no validation split out)
        assert f"<td>{final['params']:,}</td><td>{final['flops']:,}</td><td>{100 * final['test_acc']:.2f}%" in row
        assert "<td>200</td><td>1 h 30 min</td><td>cpu</td>" in row


def test_reference_curves_are_labelled_with_sources(sweep):
    fig = fig_accuracy_vs_params(load_studies(sweep[0]))
    traces = {t.name: t for t in fig.data}
    ref = traces[reference.REFERENCE_STUDY_SOURCE]
    assert list(ref.x) == [984, 4956, 9636, 50548, 99844, 352388, 491524, 1068740]
    assert ref.y[0] == pytest.approx(10.14) and ref.y[-1] == pytest.approx(49.06)
    for source in (
        "anilkagak2/DiSK_Distilling_Scaffolded_Knowledge",
        "chenyaofo/pytorch-cifar-models",
        "HobbitLong/RepDistiller",
    ):
        assert f"public: {source}" in traces
        assert source in sweep[2]  # also listed under References
    assert sum(len(t.x) for n, t in traces.items() if n.startswith("public: ")) == 9


def series(study: optuna.Study) -> str:
    """The studies of a sweep form one series: the study name without its budget."""
    return study.study_name.replace(f"-b{study.user_attrs['budget']}", "")


def test_accuracy_curve_traces(sweep):
    studies = studies_of(sweep[0])
    fig = fig_accuracy_vs_params(load_studies(sweep[0]))
    traces = {t.name: t for t in fig.data}
    assert fig.layout.xaxis.type == "log"
    for s in studies:
        done = s.get_trials(states=(TrialState.COMPLETE,))
        # one series: the legend names a study by its budget ("5k trials"), not its 40-character name
        label = f"{budget_str(s.user_attrs['budget'])} trials"
        assert sorted(traces[label].x) == sorted(t.user_attrs["params"] for t in done)
    best = traces[f"{series(studies[0])}: best per budget (search score)"]
    assert list(best.y) == pytest.approx([100 * s.best_value for s in studies])
    assert list(best.x) == [s.best_trial.user_attrs["params"] for s in studies]
    final = traces[f"{series(studies[0])}: winners, final test acc"]
    assert list(final.x) == [s.best_trial.user_attrs["params"] for s in studies]  # the winners, final-trained
    assert list(final.y) == pytest.approx([14.2, 23.1])
    everything = [
        (t.user_attrs["params"], t.value) for s in studies for t in s.get_trials(states=(TrialState.COMPLETE,))
    ]
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
    walk = [t for t in studies_of(sweep[0])[1].trials if t.state == TrialState.COMPLETE]
    centres = sorted((t for t in walk if t.user_attrs["role"] == "centre"), key=lambda t: t.user_attrs["step"])
    assert [t.user_attrs["step"] for t in centres] == list(range(len(centres))) and len(centres) >= 2
    assert list(traces["centre"].x) == [t.user_attrs["step"] for t in centres]
    assert list(traces["centre"].y) == pytest.approx([100 * t.value for t in centres])
    assert len(traces["neighbours"].x) == len(walk) - len(centres) > 0
    assert list(traces["width3"].y) == [genome_coords(t.user_attrs["genome"])["width3"] for t in centres]
    assert {"stem", "depth1", "width4", "expand2", "kernel4"} <= set(traces)


def test_genome_coords():
    g = load_space("mbconv").genome(
        {"stem": 8, "depth": [1, 2, 1, 1], "width": [4, 16, 16, 32], "expand": [4, 6, 4, 4], "kernel": [3, 5, 3, 3]}
    )
    coords = genome_coords(g.to_json())
    assert list(coords)[:4] == ["stem", "depth1", "depth2", "depth3"]  # the family's gene order
    assert coords["width2"] == 16 and coords["expand2"] == 6 and coords["kernel4"] == 3 and len(coords) == 17


def test_genome_strings_are_escaped(tmp_path):
    """A genome string with markup in it (none of nas's, but a study file may hold anything)."""
    storage = f"sqlite:///{tmp_path / 'x.db'}"

    def evil(genome, trial):
        trial.set_user_attr("genome_str", "<b>evil</b>&co")
        return 0.25

    search(
        "mbconv", 5000, SearchConfig("tpe", trials=1), storage=storage, objective=evil, recipe=RECIPE, progress=False
    )
    page = write_report(storage, tmp_path / "x.html").read_text()
    assert "<b>evil</b>" not in page
    assert "<code>&lt;b&gt;evil&lt;/b&gt;&amp;co</code>" in page
    assert "25.00%" in page  # stored in [0, 1], shown in %


@pytest.mark.parametrize(
    "trials, says",
    [
        ([], "no trials yet"),
        ([TrialState.FAIL] * 3, "all 3 trials failed"),
        ([TrialState.FAIL, TrialState.RUNNING], "no completed trials yet (1 fail, 1 running)"),
    ],
)
def test_study_without_completed_trials_renders_and_says_so(tmp_path, trials, says):
    storage = f"sqlite:///{tmp_path / 'empty.db'}"
    study = empty_study(storage, "fdpg")

    def out_of_memory(genome, trial):
        raise EvaluationFailed("CUDA out of memory")

    ev = Evaluator(study, out_of_memory, "fdpg", RECIPE.to_dict())
    space = load_space("mbconv")
    for step, state in enumerate(trials):
        if state == TrialState.FAIL:
            ev.evaluate(
                space.from_vector([8 + step] + [1] * 4 + [16] * 4 + [4] * 4 + [3] * 4), role="centre", step=step
            )
        else:
            ev.ask()  # a trial another process is still running
    page = write_report(storage, tmp_path / "empty.html").read_text()
    assert f'<p class="status">{html.escape(says)}</p>' in page
    assert f'<td colspan="7" class="note">{html.escape(says)}</td>' in page  # winners table row
    # a trial left RUNNING is counted and explained
    running = TrialState.RUNNING in trials
    assert ("still running: in a search that has ended, left by a process that died" in page) == running
    assert plot_ids(page) == ["accuracy-vs-params"]  # the reference curves still show
    assert ("<li>CUDA out of memory</li>" in page) == bool(trials.count(TrialState.FAIL))


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
    CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium; .ci/run does this)"
)

# Injected first in <head>, before plotly.js: records every uncaught error, unhandled rejection
# and console.error on <html>, where --dump-dom shows it; data-js-hook proves it ran.
ERROR_HOOK = """<script>(function () {
  var errors = [], root = document.documentElement;
  function note(msg) { errors.push(String(msg)); root.setAttribute("data-js-errors", JSON.stringify(errors)); }
  root.setAttribute("data-js-hook", "on");
  // tables wider than the window (1300 px): their indices, once the page has laid out
  window.addEventListener("load", function () {
    var wide = [];
    document.querySelectorAll("table").forEach(function (t, i) {
      if (t.getBoundingClientRect().right > root.clientWidth + 1) { wide.push(i); }
    });
    root.setAttribute("data-wide-tables", JSON.stringify(wide));
  });
  window.addEventListener("error", function (e) { note(e.message || e); });
  window.addEventListener("unhandledrejection", function (e) { note("unhandled rejection: " + e.reason); });
  var consoleError = console.error;
  console.error = function () {
    note(Array.prototype.join.call(arguments, " ")); consoleError.apply(console, arguments);
  };
})();</script>"""


def chromium_args(tmp: Path) -> list[str]:
    return [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1300,900",
        f"--user-data-dir={tmp / 'chromium-profile'}",
    ]


def render_in_browser(page: Path, tmp: Path) -> tuple[str, list[str]]:
    """The DOM after the page's scripts ran, and the JS errors they raised."""
    probe = tmp / f"probe-{page.name}"
    probe.write_text(page.read_text(encoding="utf-8").replace("<head>", "<head>" + ERROR_HOOK, 1), encoding="utf-8")
    run = subprocess.run(
        chromium_args(tmp) + ["--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=90,
    )
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
    assert 'data-wide-tables="[]"' in dom  # no table runs off the right edge of a 1300 px window


@needs_chromium
def test_empty_report_renders_in_browser(tmp_path):
    storage = f"sqlite:///{tmp_path / 'e.db'}"
    empty_study(storage)
    dom, errors = render_in_browser(write_report(storage, tmp_path / "e.html"), tmp_path)
    assert errors == [] and rendered_plots(dom) == ["accuracy-vs-params"]
    assert "no trials yet" in dom


@needs_chromium
def test_browser_check_catches_js_errors_and_unrendered_plots(sweep, tmp_path):
    broken = tmp_path / "broken.html"
    # a deliberate error, and one figure whose data is corrupted so plotly never draws it
    page = sweep[2].replace("</body>", "<script>undefinedFunction();</script></body>", 1)
    wide = '<table><tr><td style="white-space: nowrap">' + "x" * 400 + "</td></tr></table>"
    page = page.replace("</body>", wide + "</body>", 1)  # a table wider than the window
    page, n = re.subn(r'Plotly\.newPlot(\(\s*"accuracy-vs-params")', r"Plotly.newPlotX\1", page)
    assert n == 1
    broken.write_text(page, encoding="utf-8")
    dom, errors = render_in_browser(broken, tmp_path)
    assert any("undefinedFunction" in e for e in errors)
    assert any("newPlotX" in e for e in errors)
    assert "accuracy-vs-params" not in rendered_plots(dom)
    assert 'data-wide-tables="[]"' not in dom and "data-wide-tables" in dom


def test_report_write_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    storage = f"sqlite:///{tmp_path / 'w.db'}"
    empty_study(storage)
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
