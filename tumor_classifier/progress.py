"""What a training run shows: one progress bar (steps, epoch, loss), or nothing.

The ``Trainer`` reports through callbacks: ``ProgressCallback`` draws its bars and
prints the logs beside them, ``PrinterCallback`` (with ``disable_tqdm``) prints every
log as a raw dict, e.g. ``{'train_runtime': '158.3', ...}`` at the end of a run.
:func:`show_progress` takes both out and puts :class:`FitProgress` in their place.
"""

from __future__ import annotations

from tqdm.auto import tqdm
from transformers import PrinterCallback, ProgressCallback, Trainer, TrainerCallback


class FitProgress(TrainerCallback):
    """One tqdm bar over the optimisation steps, showing the epoch and the latest loss."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_local_process_zero:
            self.bar = tqdm(total=state.max_steps, desc="fit", unit="step", dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
            self.bar.set_postfix_str(f"epoch {state.epoch:.2f}/{args.num_train_epochs:g}" + self._loss(state), refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.set_postfix_str(f"epoch {state.epoch:.2f}/{args.num_train_epochs:g}" + self._loss(state))
            self.bar.close()
            self.bar = None

    @staticmethod
    def _loss(state) -> str:
        losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
        return f", loss {losses[-1]:.4f}" if losses else ""


def show_progress(trainer: Trainer, verbose: int) -> Trainer:
    """Replaces the Trainer's printing callbacks by one :class:`FitProgress` bar (``verbose > 0``) or nothing.

    The loss reaches the bar through the Trainer's logs, so ``args.logging_strategy``
    must log steps for the bar to show it.
    """
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    try:
        from transformers.utils.notebook import NotebookProgressCallback
    except ImportError:  # needs IPython
        pass
    else:
        trainer.remove_callback(NotebookProgressCallback)
    if verbose > 0:
        trainer.add_callback(FitProgress())
    return trainer
