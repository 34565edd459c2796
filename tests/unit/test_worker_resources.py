"""What a service's resources mean to each executor: slots of the local pool, and whether a Ray
cluster's nodes could hold one of its actors."""

from __future__ import annotations

import pytest

from batchserve.engine.tasks import ServiceSpec
from batchserve.executors.process import slots_for
from batchserve.executors.ray import actor_options, resource_problem  # the test extra brings Ray


def spec(**resources: object) -> ServiceSpec:
    return ServiceSpec(
        key="k", bundle_key="k", mode="row", inputs={}, outputs={}, artifacts=(),
        resources=dict(resources),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("cpus", "slots"),
    [(None, 1), (0.5, 1), (1, 1), (1.5, 2), (2, 2), (3, 3), (64, 4)],
)
def test_a_chunk_takes_as_many_local_slots_as_its_service_asks_cpus(cpus, slots):  # type: ignore[no-untyped-def]
    resources = {} if cpus is None else {"num_cpus": cpus}
    assert slots_for(spec(**resources), capacity=4) == slots


def test_services_published_before_resources_take_one_slot():
    assert slots_for(spec(), capacity=2) == 1


def test_a_service_fits_when_one_node_has_all_it_asks_for():
    nodes = [{"CPU": 2.0, "memory": 8e9}, {"CPU": 8.0, "GPU": 1.0, "memory": 32e9}]
    assert resource_problem({"num_cpus": 4, "num_gpus": 1, "memory": 16e9}, nodes) is None
    assert actor_options({"num_cpus": 2, "num_gpus": 1, "memory": 2**30}) == {
        "num_cpus": 2.0,
        "num_gpus": 1.0,
        "memory": 2**30,
    }
    assert actor_options({}) == {"num_cpus": 1.0}


def test_a_service_no_single_node_can_hold_is_refused_with_what_the_nodes_have():
    # Enough in all, but not on one node: an actor runs on one node.
    nodes = [{"CPU": 4.0, "GPU": 1.0}, {"CPU": 8.0}]
    problem = resource_problem({"num_cpus": 8, "num_gpus": 1}, nodes)
    assert problem is not None
    assert "CPU 8, GPU 1" in problem and "CPU 4, GPU 1" in problem
    assert "no live node" in (resource_problem({"num_cpus": 1}, []) or "")
