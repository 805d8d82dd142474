"""The Trainer's arguments and what users' functions return: each mistake is an error naming it, when the
Trainer is built or at the first call; and the public API of train, optim, tokenizers, data and nn.utils
is documented. The model, config and batches are test_train's."""

from __future__ import annotations

import numpy as np
import pytest
from test_train import config, get_batch, make_model

import groundup.nn as nn
from groundup.train import Trainer


@pytest.mark.parametrize("kwargs, message", [
    (dict(model=nn.Linear(8, 4)), r"Linear has no loss\(\*batch\) method; give loss_fn="),
    (dict(get_batch=None), "get_batch must be a function, got NoneType"),
    (dict(callbacks=[print, "log"]), r"each callback must be a function callback\(trainer, event, info\), got str"),
    (dict(config={"max_iters": 3}), "config must be a TrainConfig, got dict"),
])
def test_trainer_names_a_bad_argument_when_built(kwargs, message):
    """A model without loss() was an AttributeError at the first evaluation, a bad callback a TypeError from
    inside fit, a dict for the config an AttributeError on '.device'."""
    args = {"model": make_model(), "config": config(), "get_batch": get_batch, **kwargs}
    with pytest.raises(TypeError, match=f"Trainer: {message}"):
        Trainer(**args)


@pytest.mark.parametrize("kwargs, message", [
    (dict(evaluate=lambda trainer: 0.5), "evaluate must return a dict of name -> number.*got float 0.5"),
    (dict(evaluate=lambda trainer: {"acc": "high"}), "evaluate returned .*every value must be a number"),
    (dict(get_batch=lambda split, rng: {"x": np.zeros((2, 8))}), r"get_batch\('train', rng\) must return a tuple "
                                                                 r"of Tensors or numeric arrays.*item 0 is dict"),
    (dict(get_batch=lambda split, rng: (np.zeros((2, 8)), ["a", "b"])), "get_batch.*item 1 is list of dtype <U1"),
])
def test_trainer_names_what_a_users_function_returned_wrong(kwargs, message):
    """These were an AttributeError ('float' object has no attribute 'items'), a bare float() ValueError and
    'tensor: cannot make a tensor from data of dtype object' / '<U1'."""
    args = {"model": make_model(), "config": config(), "get_batch": get_batch, **kwargs}
    with pytest.raises(TypeError, match=f"Trainer: {message}"):
        Trainer(**args).fit()


def test_trainer_takes_one_callback_alone():
    """callbacks=fn (not [fn]) was "Value after * must be an iterable, not function"."""
    events = []
    Trainer(make_model(), config(max_iters=2), get_batch, callbacks=lambda t, e, info: events.append(e)).fit()
    assert events[0] == "fit_start" and events[-1] == "fit_end" and events.count("step") == 2


@pytest.mark.parametrize("module_name", ["groundup.train", "groundup.train.callbacks", "groundup.optim",
                                         "groundup.optim.schedule", "groundup.tokenizers", "groundup.data",
                                         "groundup.nn.utils"])
def test_public_api_has_docstrings(module_name):
    """Every class and function in ``__all__`` and every public method or property of those classes has a
    docstring (inherited ones count, as ``help()`` shows them)."""
    import importlib
    import inspect

    module = importlib.import_module(module_name)
    missing = []
    for name in module.__all__:
        obj = getattr(module, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if not inspect.getdoc(obj):
            missing.append(name)
        if inspect.isclass(obj):
            for attr, value in vars(obj).items():
                if attr.startswith("_"):
                    continue
                if isinstance(value, property) and not value.__doc__:
                    missing.append(f"{name}.{attr}")
                elif inspect.isfunction(value) and not inspect.getdoc(getattr(obj, attr)):
                    missing.append(f"{name}.{attr}")
    assert not missing, f"{module_name}: no docstring for {missing}"
