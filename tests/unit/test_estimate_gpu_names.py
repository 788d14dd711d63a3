"""Which catalogue GPU a name means: `--gpu NAME` (find_gpu) and the name CUDA reports (match_device_name).

A name means a card only where it cannot mean another: the words that tell cards apart (Ti, SUPER, S, a memory
size, PCIe against SXM where the catalogue says which) are never ignored. The shipped catalogue, no stand-ins.
"""

from __future__ import annotations

import pytest

from finetune import catalog as cat


@pytest.fixture
def gpus() -> list[cat.GPU]:
    return cat.load_gpus()  # the shipped catalogue: the test's FINETUNE_HOME holds no gpus.yaml


@pytest.mark.parametrize("name, card", [
    ("4090", "RTX 4090"), ("rtx 4090", "RTX 4090"), ("RTX 4090", "RTX 4090"), ("NVIDIA GeForce RTX 4090", "RTX 4090"),
    ("a100 80gb", "A100 80GB"), ("A100-SXM4-40GB", "A100 40GB"), ("4060 ti", "RTX 4060 Ti 16GB"),
    ("4060ti", "RTX 4060 Ti 16GB"), ("h100", "H100"), ("H100 80GB HBM3", "H100"), ("RTX A6000 48GB", "RTX A6000"),
    ("l40s", "L40S"), ("l4", "L4"), ("a10", "A10"), ("4070 Ti Super", "RTX 4070 Ti SUPER"),
    # An alias is the catalogue's own choice, not a fragment: 'a100' is the 80 GB card, the one usually rented.
    ("a100", "A100 80GB"),
])
def test_a_name_alias_or_series_less_name_picks_its_card(gpus, name, card):
    assert cat.find_gpu(name, gpus).name == card


@pytest.mark.parametrize("name, meant", [
    # Until 2026-12-05 a fragment in exactly one catalogue name was that card: '4060' was the 4060 Ti (the plain
    # RTX 4060 is an 8 GB card), 'L40' the L40S.
    ("4060", "RTX 4060 Ti 16GB"), ("rtx 4060", "RTX 4060 Ti 16GB"), ("L40", "L40S"), ("1080", "GTX 1080 Ti"),
    ("3090 ti", "RTX 3090"), ("h100 pcie", "H100"),
])
def test_a_name_missing_or_adding_a_distinguishing_word_is_refused_with_a_did_you_mean(gpus, name, meant):
    with pytest.raises(cat.CatalogError) as info:
        cat.find_gpu(name, gpus)
    message = str(info.value)
    assert message.startswith(f"--gpu {name!r}: not in the GPU catalogue (did you mean ") and repr(meant) in message
    assert "another card" in message and "\n" not in message


@pytest.mark.parametrize("reported, card", [
    ("NVIDIA A100-SXM4-40GB", "A100 40GB"), ("NVIDIA A100-PCIE-40GB", "A100 40GB"),
    ("NVIDIA A100-SXM4-80GB", "A100 80GB"), ("NVIDIA A100 80GB PCIe", "A100 80GB"),
    ("NVIDIA GeForce RTX 4070 Ti SUPER", "RTX 4070 Ti SUPER"), ("NVIDIA GeForce RTX 4070", "RTX 4070"),
    ("NVIDIA L40S", "L40S"), ("NVIDIA L4", "L4"), ("NVIDIA H100 80GB HBM3", "H100"), ("Tesla T4", "T4"),
    ("NVIDIA GeForce RTX 3090", "RTX 3090"), ("NVIDIA RTX A6000", "RTX A6000"), ("NVIDIA A10G", "A10"),
    # Until 2026-12-05 the longest catalogue name inside the reported one won: the A100 40GBs were read as the
    # 80 GB card (through its alias 'a100'), the 4070 Ti SUPER as the 4070, the L40 as the L4, the H100 PCIe as
    # the SXM, the 3090 Ti as the 3090. A card the catalogue lacks gets the unknown-card path instead.
    ("NVIDIA L40", None), ("NVIDIA H100 PCIe", None), ("NVIDIA GeForce RTX 3090 Ti", None),
    ("NVIDIA GeForce RTX 4070 SUPER", None), ("NVIDIA GeForce RTX 4060", None), ("NVIDIA H100 NVL", None),
    ("NVIDIA GeForce RTX 4090 D", None), ("NVIDIA GeForce RTX 4090 Laptop GPU", None), ("NVIDIA GH200 480GB", None),
    ("NVIDIA A100-SXM4-40GB MIG 1g.5gb", None), ("Some Future Card", None),
])
def test_a_cuda_device_name_is_its_catalogue_card_or_none(gpus, reported, card):
    found = cat.match_device_name(reported, gpus)
    assert (found.name if found else None) == card


def test_the_reported_memory_tells_a_card_of_two_sizes_apart(gpus):
    # CUDA names the 8 and 16 GB RTX 4060 Ti alike; torch reports the memory in GiB, a little under the nominal.
    assert cat.match_device_name("NVIDIA GeForce RTX 4060 Ti", gpus, 15.7).name == "RTX 4060 Ti 16GB"
    assert cat.match_device_name("NVIDIA GeForce RTX 4060 Ti", gpus, 7.6) is None
    assert cat.match_device_name("NVIDIA H200", gpus, 139.8).name == "H200"  # 141 GB nominal
    assert cat.match_device_name("Tesla T4", gpus, 14.7).name == "T4"


def test_the_card_a_shipped_recipe_recommends_is_in_the_catalogue(gpus):
    # recipes/llama3-8b-pirate.yaml: "one 16 GB GPU (RTX 4060 Ti 16 GB, 4070 Ti Super, T4 is tight)".
    card = cat.find_gpu("4070 Ti Super", gpus)
    assert card.memory_gb == 16 and card.power_w == 285 and card.fp32_tflops == 44.1
    assert card.bf16_tflops == 2 * card.fp32_tflops  # Ada GeForce, fp32 accumulate, as the 4060 Ti/4070/4090 here
