"""`make profile`'s summary of py-spy's collapsed stacks (tools/bench/profile.py)."""

from tools.bench.profile import render, summarize

# As py-spy writes them: every stack starts in runpy, outside our code.
OUTER = "_run_module_as_main (<frozen runpy>);_run_code (<frozen runpy>);"
STACKS = [
    OUTER + "main (cdrflow/cli.py);run (workers/worker.py);normalize (workers/normalize.py);"
    "content_hash (schemas/content.py) 30\n",
    OUTER + "main (cdrflow/cli.py);run (workers/worker.py);copy (asyncpg/connection.py) 50\n",
    OUTER + "main (cdrflow/cli.py);select (selectors.py) 20\n",
    # recursion: a frame twice on one stack counts once for that sample
    OUTER + "main (cdrflow/cli.py);canonical (schemas/content.py);"
    "canonical (schemas/content.py) 5\n",
    # a library whose path holds one of our packages' names is not ours
    OUTER + "main (cdrflow/cli.py);send (.venv/lib/site-packages/aiormq/cdrflow/x.py) 0\n",
    "\n",
    "garbage without a count\n",
]


def test_self_samples_go_to_the_innermost_frame() -> None:
    summary = summarize(STACKS)
    assert summary.samples == 105
    assert summary.own[:3] == [
        ("copy (asyncpg/connection.py)", 50),
        ("content_hash (schemas/content.py)", 30),
        ("select (selectors.py)", 20),
    ]


def test_inclusive_lists_only_our_code_and_counts_recursion_once() -> None:
    inclusive = dict(summarize(STACKS).inclusive)
    assert inclusive["main (cdrflow/cli.py)"] == 105
    assert inclusive["run (workers/worker.py)"] == 80
    assert inclusive["canonical (schemas/content.py)"] == 5
    assert "copy (asyncpg/connection.py)" not in inclusive
    assert "select (selectors.py)" not in inclusive
    assert "_run_module_as_main (<frozen runpy>)" not in inclusive
    assert "send (.venv/lib/site-packages/aiormq/cdrflow/x.py)" not in inclusive


def test_top_limits_each_list_after_choosing_our_code() -> None:
    summary = summarize(STACKS, top=2)
    assert len(summary.own) == 2
    # runpy's frames are on every stack: cutting before choosing would leave none of ours
    assert summary.inclusive == [("main (cdrflow/cli.py)", 105), ("run (workers/worker.py)", 80)]


def test_render_shows_shares_of_all_samples() -> None:
    text = render(summarize(STACKS), "heading")
    assert text.startswith("heading\n105 samples")
    assert "  47.6%  copy (asyncpg/connection.py)" in text
    assert "  76.2%  run (workers/worker.py)" in text
