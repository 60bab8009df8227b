"""A Ctrl-C during a Tune phase is noticed whatever statuses Tune leaves its trials in
(search/sweep/tuners.py InterruptWatch), and a phase that saw one raises SweepInterrupted."""
import os
import signal
import sys
import time

from ray import cloudpickle, tune

from augtune.search.sweep.tuners import TUNE_INTERRUPTED, InterruptWatch


def _reports(config):
    for step in range(20):
        time.sleep(0.05)
        tune.report({"step": step})


class CtrlCAtFirstResult(tune.Callback):
    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not hasattr(self, "sent"):
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)


def _fit(tmp_path, name, callbacks):
    TUNE_INTERRUPTED.clear()
    return tune.Tuner(_reports, param_space={"a": tune.grid_search([1, 2])},
                      tune_config=tune.TuneConfig(max_concurrent_trials=1),
                      run_config=tune.RunConfig(name=name, storage_path=str(tmp_path), verbose=0,
                                                callbacks=callbacks)).fit()


def test_a_ctrl_c_during_fit_is_noted_and_a_complete_fit_is_not(tmp_path, ray_session):
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the trainable lives in this test file
    handler = signal.getsignal(signal.SIGINT)
    stopped = _fit(tmp_path, "stopped", [InterruptWatch(), CtrlCAtFirstResult()])
    assert TUNE_INTERRUPTED.is_set()
    assert min(r.metrics.get("step", 0) for r in stopped) < 19  # Tune did stop early
    assert signal.getsignal(signal.SIGINT) is handler  # Tune put the handler before the fit back
    _fit(tmp_path, "complete", [InterruptWatch()])
    assert not TUNE_INTERRUPTED.is_set()
