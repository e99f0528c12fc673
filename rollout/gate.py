"""The quality gate: a new version's offline (holdout) metrics against the serving one's."""

from typing import TYPE_CHECKING

from mlscale.rollout.kube import ClusterError, Refused

if TYPE_CHECKING:
    from mlscale.rollout.release import Release

# Offline metrics where smaller is better; any other metric (r2, accuracy, ...) is the reverse.
LOWER_IS_BETTER = {"mse", "rmse", "mae", "log_loss"}


def quality_gate(
    versions: dict[str, dict[str, float]], current: str, candidate: str, max_regression: float
) -> None:
    """Refuse a version the store lacks, or whose offline metrics are worse than the current
    version's by more than `max_regression` (relative). `versions` maps each version the
    store holds to its metrics."""
    if candidate not in versions:
        raise Refused(
            f"version {candidate} is not in the image's model store (it has "
            f"{', '.join(sorted(versions))}); build an image that holds it"
        )
    if versions.get(current) and not versions[candidate]:
        raise Refused(
            f"quality gate: version {candidate} has no offline metrics (published without "
            f"holdout data), so there is nothing to compare with {current}; publish it with "
            "--holdout, or --force to deploy anyway"
        )
    worse = []
    for metric, before in versions.get(current, {}).items():
        after = versions[candidate].get(metric)
        if after is None or before == 0:
            continue
        change = (after - before) / abs(before)
        regression = change if metric in LOWER_IS_BETTER else -change
        if regression > max_regression:
            worse.append(f"{metric} {before:.4g} -> {after:.4g} ({regression:.1%} worse)")
    if worse:
        raise Refused(
            f"quality gate: version {candidate} is worse than {current}: "
            f"{'; '.join(worse)} (limit {max_regression:.0%}; --force to deploy anyway)"
        )


def check_candidate(release: "Release", run: dict, max_regression: float, track: str) -> bool:
    """The quality gate of a model image, whose metrics only its own pods can tell (the
    controller runs no container engine): False until a pod of the version is Ready to be
    asked; True once checked (status.rollout.gated); Refused when it fails."""
    if run.get("gated"):
        return True
    try:
        held = release.store_versions(track, run["version"])
    except ClusterError:  # no Ready pod of the version yet
        return False
    versions = {run["version"]: held.get(run["version"], {})} if run["version"] in held else {}
    versions[run["previousVersion"]] = run.get("baselineMetrics") or {}
    quality_gate(versions, run["previousVersion"], run["version"], max_regression)
    run["gated"] = True
    return True
