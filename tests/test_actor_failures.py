"""The one line for a dead actor (issue 17 item 6), from Ray's own exception types: the end-to-end deaths (a
SIGKILLed learner rank or reward actor in a real run) are in tests/test_chaos.py."""

from __future__ import annotations

import os
import sys

import pytest
import ray

from rlpost.cluster.groups import ActorDied, _death, get
from rlpost.config import ConfigError
from rlpost.train import user_error

# The shape of Ray 2.x's ActorDiedError text for a killed actor process.
KILLED = ("The actor died unexpectedly before finishing this task.\n\tclass_name: LearnerRank\n\tactor_id: ab12\n"
          "\tpid: 4242\n\tnamespace: x\n\tip: 10.1.2.3\nThe actor is dead because its worker process has died. "
          "Worker exit type: SYSTEM_ERROR Worker exit detail: Worker unexpectedly exits with a connection error "
          "code 2. End of file. Some common causes include: (1) the process was killed by the OOM killer")


def test_a_dead_actor_is_one_line_naming_it_and_its_node() -> None:
    err = _death(ray.exceptions.RayActorError(actor_id="ab12", error_msg=KILLED), {"ab12": "learner rank 1"})
    assert isinstance(err, ActorDied)
    assert str(err) == ("learner rank 1 (node 10.1.2.3) died (exit type SYSTEM_ERROR: killed, out of memory or "
                        "crashed; its last lines are in the log above)")


def test_an_unknown_actor_and_a_message_without_fields_still_make_one_line() -> None:
    err = _death(ray.exceptions.RayActorError(actor_id="ff", error_msg="The actor is gone.\nMore text."), {})
    assert str(err) == ("an actor (node unknown) died (The actor is gone: killed, out of memory or crashed; its "
                        "last lines are in the log above)")


class Fragile:
    """A real actor that can fail in its constructor or die in a method."""

    def __init__(self, fail: bool) -> None:
        if fail:
            raise ConfigError("model.path: '/nowhere' is not a folder; point it at a model")

    def die(self) -> None:
        os._exit(1)


@pytest.mark.slow
@pytest.mark.integration
def test_real_actors_death_and_init_failure(local_ray) -> None:
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tests/ is not importable in Ray's workers
    actor = ray.remote(Fragile).options(num_cpus=0)
    dying = actor.remote(False)
    with pytest.raises(ActorDied, match=r"^reward actor 3 \(node [\d.]+\) died \(exit type \w+: killed, "):
        get([dying.die.remote()], {dying._actor_id.hex(): "reward actor 3"})
    # A constructor's error keeps its own line (train.user_error finds it), not a "died" line.
    failing = actor.remote(True)
    with pytest.raises(ray.exceptions.RayActorError) as raised:
        get(failing.__ray_ready__.remote(), {failing._actor_id.hex(): "learner rank 0"})
    assert user_error(raised.value) == "model.path: '/nowhere' is not a folder; point it at a model"
