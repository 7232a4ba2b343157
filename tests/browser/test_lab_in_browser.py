"""The lab as a person sees it: JupyterLab and TensorBoard in a real browser (headless Chromium), through
tflab's tunnels to a lab that `tflab run-lab --host` made on a loopback sshd."""

from __future__ import annotations

import re

import pytest

from tflab.lab import http_json

pytestmark = [pytest.mark.slow, pytest.mark.browser]

NOTEBOOKS = ["1-basics.ipynb", "2-train.ipynb", "3-tensorboard.ipynb", "4-export.ipynb", "5-predict.ipynb"]
STDERR = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'  # JupyterLab's red areas
# The training graph's namespaces, as the lab's steps 8-9 of its TensorBoard part have the learner read them.
NAMESPACES = {"weights", "gradients", "GradientDescent", "y_predicted"}


def jupyter_url(lab, path: str = "/lab") -> str:
    report, tunnels, _ = lab
    token = report["jupyter"]["url"].split("token=")[1]
    return tunnels.url("jupyter", f"{path}?token={token}")


def shown(page, tmp_path, name: str) -> None:
    """Keep what the page shows (a person's view) next to the test's other files."""
    shot = tmp_path / f"{name}.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")


KERNEL_IDLE = re.compile(r"Python 3 \(ipykernel\) \| Idle")  # the status bar, once the kernel is connected
ALL_RAN = """() => {
    const prompts = [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt')];
    return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
}"""  # every code cell of the open notebook shows its execution count


def open_notebook(page, lab, name: str) -> bool:
    """Open a notebook as a person does (the token URL, then a double click in the file browser) and wait
    until its kernel is idle; returns whether its tab was then marked modified."""
    page.goto(jupyter_url(lab))
    page.locator(".jp-DirListing-item", has_text=name).dblclick()
    tab = page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current", has_text=name)
    tab.wait_for()
    page.get_by_text(KERNEL_IDLE).wait_for(timeout=120_000)
    page.wait_for_timeout(2000)  # anything JupyterLab changes in a notebook it opens, it has changed by now
    assert page.locator(".jp-Dialog").count() == 0, page.locator(".jp-Dialog").inner_text()  # e.g. "Select Kernel"
    return "jp-mod-dirty" in (tab.get_attribute("class") or "")


def run_all_cells(page) -> list[str]:
    """Run > Run All Cells, as a person does; returns the outputs' texts once every cell has run."""
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()
    page.wait_for_function(ALL_RAN, timeout=240_000)
    page.get_by_text(KERNEL_IDLE).wait_for()
    return page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output").all_inner_texts()


@pytest.fixture(scope="module")
def notebook_ran(lab, browser_context, tmp_path_factory):
    """3-tensorboard opened in JupyterLab and run: (marked modified on opening?, outputs, red outputs)."""
    page = browser_context.new_page()
    try:
        modified_on_open = open_notebook(page, lab, "3-tensorboard.ipynb")
        outputs = run_all_cells(page)
        red = page.locator(STDERR).all_inner_texts()
    finally:
        shown(page, tmp_path_factory.mktemp("notebook"), "3-tensorboard-ran")
        page.close()
    return modified_on_open, outputs, red


def test_jupyterlab_opens_with_the_token_url_and_lists_the_five_notebooks(lab, page, tmp_path):
    page.goto(jupyter_url(lab))
    items = page.locator(".jp-DirListing-item .jp-DirListing-itemText")
    items.nth(len(NOTEBOOKS) - 1).wait_for()
    shown(page, tmp_path, "jupyterlab")
    assert sorted(items.all_inner_texts()) == NOTEBOOKS


def test_a_notebook_opens_unmodified_and_runs_without_error_coloured_output(notebook_ran):
    modified_on_open, outputs, red = notebook_ran
    assert not modified_on_open  # nbformat 4.5 with cell ids and the kernel's metadata: nothing to add
    text = "\n".join(outputs)
    assert "[train] 100 steps at learning rate 0.001" in text and "logs/your-run-1" in text, text
    assert re.fullmatch(r"\d+\.\d+", outputs[-1].strip()), outputs  # the final loss, the cell's value
    assert red == []  # TensorFlow's C++ start-up lines are not in the cells


def test_the_export_notebook_says_where_the_model_is_and_no_internal_path(lab, page, tmp_path):
    _, _, workdir = lab
    open_notebook(page, lab, "4-export.ipynb")
    outputs = run_all_cells(page)
    shown(page, tmp_path, "4-export-ran")
    text = "\n".join(outputs)
    assert re.search(rf"SavedModel version \d+ written to {re.escape(str(workdir))}/models/nn/\d+ ", text), text
    assert "partial" not in text and "Assets written" not in text, text  # not the staging folder it renames
    assert page.locator(STDERR).all_inner_texts() == []


def test_tensorboard_scalars_show_the_loss(lab, page, tmp_path):
    _, tunnels, _ = lab
    page.goto(tunnels.url("tensorboard", "/#scalars"))
    cards = page.locator(".heading-label.name")  # each chart's title
    cards.first.wait_for()
    page.wait_for_timeout(1000)
    shown(page, tmp_path, "scalars")
    titles = {t.strip() for t in cards.all_inner_texts()}
    assert {"loss", "weights/summaries/mean", "weights/summaries/max", "weights/summaries/min"} <= titles, titles


def test_tensorboard_graphs_open_on_the_labs_run_with_its_namespaces_at_the_top_level(lab, notebook_ran, page,
                                                                                        tmp_path):
    """The lab's steps 8-9 of its TensorBoard part: GRAPHS shows the training graph, its namespaces
    (double-click to expand) at the top level; on the lab's run, though a notebook wrote a run too."""
    _, tunnels, _ = lab
    runs = http_json(tunnels.url("tensorboard", "/data/runs"))
    assert "run-1" in runs and "your-run-1" in runs, runs
    page.goto(tunnels.url("tensorboard", "/#graphs"))
    labels = page.locator("svg text.nodelabel")  # one per node drawn, namespaces collapsed
    labels.first.wait_for(state="attached")
    page.wait_for_timeout(2000)
    shown(page, tmp_path, "graphs")
    top = set(labels.evaluate_all("els => els.map(e => (e.querySelector('title') || e).textContent.trim())"))
    assert NAMESPACES | {"y_error", "loss"} <= top, top
    assert not any(re.fullmatch(r"graph_\d+", name) for name in top), top  # not the opaque boxes of several graphs
    run, tag = page.locator("tf-graph-controls paper-dropdown-menu").evaluate_all("els => els.map(e => e.value)")
    assert (run, tag) == ("run-1", "single_neuron_training")
    # Double-clicking a namespace expands it: `weights` holds `summaries`, as in the lab's variable_summaries.
    page.locator("g.node", has=page.locator("text.nodelabel title", has_text=re.compile(r"^weights$"))).first.dblclick()
    page.wait_for_timeout(1500)
    inside = set(labels.evaluate_all("els => els.map(e => (e.querySelector('title') || e).textContent.trim())"))
    shown(page, tmp_path, "graphs-weights-expanded")
    assert "summaries" in inside, inside
