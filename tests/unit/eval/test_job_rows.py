"""A job's reference rows and each arm against its own chance, checked against scipy's paired t-test."""

from scipy import stats

from microdit.eval.job_rows import chance_table, reference_rows

SHAPE, CHANCE, FD = "eval.heldout.probe_acc.shape", "eval.heldout.probe_chance.shape", "eval.heldout.probe_fd"
ACC = {"a": [0.30, 0.25, 0.28, 0.33], "b": [0.16, 0.10, 0.21, 0.12]}
SHUFFLED = {"a": [0.11, 0.09, 0.10, 0.12], "b": [0.10, 0.12, 0.09, 0.11]}


def rows(**extra):
    return [{"trainer.name": arm, "trainer.seed": s, "after": "pretrain", SHAPE: ACC[arm][s],
             CHANCE: SHUFFLED[arm][s], FD: 50.0 + s, "eval.heldout.probe_fd_real": 10.0 + s, **extra}
            for arm in ACC for s in range(4)]


def test_reference_rows_read_the_chance_and_real_columns_of_each_run():
    refs = reference_rows(rows(), [SHAPE, FD])
    chance = [r for r in refs if r["trainer.name"] == "chance (shuffled prompts)"]
    real = [r for r in refs if r["trainer.name"] == "real vs real (same n)"]
    assert [r[SHAPE] for r in chance] == SHUFFLED["a"] + SHUFFLED["b"] and all(FD not in r for r in chance)
    # one per seed: the arms of a seed share its real draw (the same value in every run's evaluation)
    assert [r[FD] for r in real] == [10.0, 11.0, 12.0, 13.0] and all(SHAPE not in r for r in real)
    other = rows(**{"data.folders": ["data/other"]})  # another dataset: other draws
    assert len([r for r in reference_rows(rows() + other, [FD]) if r["trainer.name"] == "real vs real (same n)"]) == 8


def test_each_arm_is_tested_against_its_own_chance_on_the_same_samples():
    table = chance_table(rows(), [SHAPE, FD])
    lines = [line for line in table.splitlines() if "(shuffled prompts) vs" in line]
    assert [line.split(" | ")[0] for line in lines] == ["| a (shuffled prompts) vs a", "| b (shuffled prompts) vs b"]
    assert all(" | probe_acc.shape | " in line for line in lines)  # probe_fd has no chance: no line
    p = [stats.ttest_rel(ACC[arm], SHUFFLED[arm]).pvalue for arm in ACC]  # the oracle: scipy's paired t
    low, high = sorted(p)
    step = {low: min(1.0, 2 * low), high: min(1.0, max(2 * low, high))}  # Holm by hand over the two tests
    for line, arm, p_arm in zip(lines, ACC, p, strict=True):
        p_holm = step[p_arm]
        cells = line.split(" | ")
        mean = sum(x - y for x, y in zip(ACC[arm], SHUFFLED[arm], strict=True)) / 4
        assert cells[3].startswith(f"{mean:.4g} ± ") and cells[3].endswith("(n=4)")
        assert (cells[5], cells[6]) == (f"{p_arm:.2g}", f"{p_holm:.2g}")
    assert "Holm over the 2 tests of this table" in table


def test_budget_jobs_test_each_arm_at_each_budget_and_no_accuracy_means_no_table():
    budgeted = [{**r, "arm": r["trainer.name"], "budget": b} for b in (1e12, 2e12) for r in rows()]
    table = chance_table(budgeted, [SHAPE], arm="arm", stage="budget")
    assert sum("| a (shuffled prompts) vs a |" in line for line in table.splitlines()) == 2
    assert "| a (shuffled prompts) vs a | 2000000000000.0 | probe_acc.shape |" in table
    assert chance_table(rows(), [FD]) == ""
    assert chance_table([{**r, CHANCE: None} for r in rows()], [SHAPE]) == ""  # evaluated without the probe
