"""Reference CIFAR-100 results from prior work (the reference study and public model zoos), for the report.

Plain data: the report overlays these on our accuracy-vs-parameters curve so the page shows
where a search stands. Accuracies are test top-1 in [0, 1], like everything in the studies.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RefPoint:
    """One published model: parameter count, CIFAR-100 test top-1 in [0, 1], what it is."""

    model: str
    params: int
    test_acc: float
    recipe: str
    source: str


REFERENCE_STUDY_SOURCE = "reference study's Table 1 models, 200 ep Adam, no aug"

# The reference study's curve to beat: models 1-3 hand-made plain/depthwise-separable convs,
# models 4-8 simplified MBConv; all 200 epochs, Adam defaults, no augmentation.
REFERENCE_STUDY: tuple[RefPoint, ...] = tuple(
    RefPoint(f"model {i}", params, acc, "200 ep Adam, no aug", REFERENCE_STUDY_SOURCE)
    for i, (params, acc) in enumerate(
        [
            (984, 0.1014),
            (4_956, 0.1678),
            (9_636, 0.2177),
            (50_548, 0.297),
            (99_844, 0.3553),
            (352_388, 0.4078),
            (491_524, 0.4334),
            (1_068_740, 0.4906),
        ],
        start=1,
    )
)

_DISK = "anilkagak2/DiSK_Distilling_Scaffolded_Knowledge"
_CHENYAOFO = "chenyaofo/pytorch-cifar-models"
_REPDISTILLER = "HobbitLong/RepDistiller"

# Other public small-model points; parameter counts are approximate ("~8.0k", "0.28M").
# A recipe is given only where its source states one.
PUBLIC_POINTS: tuple[RefPoint, ...] = (
    RefPoint("ResNet10_xxxs", 8_000, 0.2821, "200 ep SGD", _DISK),
    RefPoint("ResNet10_xxs", 13_000, 0.3205, "", _DISK),
    RefPoint("ResNet10_xs", 27_900, 0.4299, "", _DISK),
    RefPoint("ResNet10_s", 83_900, 0.5216, "", _DISK),
    RefPoint("resnet20", 280_000, 0.6883, "200 ep cosine SGD", _CHENYAOFO),
    RefPoint("resnet32", 470_000, 0.7016, "", _CHENYAOFO),
    RefPoint("wrn-40-1", 570_000, 0.7198, "240 ep", _REPDISTILLER),
    RefPoint("resnet56", 860_000, 0.7263, "", _CHENYAOFO),
    RefPoint("mobilenetv2_x0_75", 1_480_000, 0.7361, "", _CHENYAOFO),
)


def public_sources() -> list[str]:
    """The distinct sources of PUBLIC_POINTS, in first-seen order."""
    return list(dict.fromkeys(p.source for p in PUBLIC_POINTS))
