"""Drop-in diffusers schedulers whose `step` (and `add_noise`, `get_velocity`) run the
fused pykernels ops.

    from pykernels.integrations.diffusers import FusedDDIMScheduler
    pipe.scheduler = FusedDDIMScheduler.from_config(pipe.scheduler.config)

`FusedDDPMScheduler` and `FusedDDIMScheduler` subclass diffusers' `DDPMScheduler` and
`DDIMScheduler`: same constructor, config, `set_timesteps`, and `step` signature and
return type, so a pipeline uses them unchanged. What differs:

- the step is one fused kernel, coefficients are indexed on the device (no `.item()`,
  no `nonzero()`: the previous DDPM timestep is found with device ops), so a sampling
  loop with tensor timesteps does not synchronise with the host;
- coefficients are computed in float32 even for float16 samples (diffusers computes
  them in the sample dtype in `add_noise`, where fp16 rounds alpha_bar to 1 at the
  first timesteps);
- DDPM with a tensor timestep on a GPU always draws its noise (the kernel ignores it
  at t = 0), where diffusers skips the draw at t = 0 after a host check; with an int
  or CPU timestep the random stream is exactly diffusers'.

Configurations the fused op does not cover (DDPM variance types other than
"fixed_small", learned variance channels) fall back to diffusers' own `step`.

diffusers is optional: importing this module without it raises ImportError; nothing
else in pykernels imports it.
"""

from __future__ import annotations

import torch

try:
    from diffusers import DDIMScheduler, DDPMScheduler
    from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
    from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput
    from diffusers.utils.torch_utils import randn_tensor
except ImportError as exc:  # pragma: no cover - exercised only without diffusers
    raise ImportError(
        "pykernels.integrations.diffusers needs the optional dependency diffusers "
        f"(pip install diffusers): {exc}"
    ) from exc

from ..ops import diffusion as _ops

__all__ = ["FusedDDPMScheduler", "FusedDDIMScheduler"]


class _FusedMixin:
    """Device copies of the fp32 alphas_cumprod table and the shared overrides."""

    def _pk_table(self, device: torch.device) -> torch.Tensor:
        cache = self.__dict__.setdefault("_pk_tables", {})
        key = (str(device), self.alphas_cumprod.data_ptr())
        if key not in cache:
            cache.clear()
            cache[key] = self.alphas_cumprod.to(device=device, dtype=torch.float32).contiguous()
        return cache[key]

    @staticmethod
    def _pk_timesteps(t, sample: torch.Tensor):
        """An int stays an int (the op broadcasts it); a tensor becomes [N] int64 on the
        sample's device (a 0-dim one is broadcast)."""
        if isinstance(t, torch.Tensor):
            t = t.to(device=sample.device, dtype=torch.int64)
            return t.reshape(()).expand(sample.shape[0]) if t.numel() == 1 else t
        return int(t)

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor
    ) -> torch.Tensor:
        t = timesteps.to(original_samples.device).reshape(-1).to(torch.int64)
        return _ops.add_noise(original_samples, noise, t, self._pk_table(original_samples.device))

    def get_velocity(
        self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor
    ) -> torch.Tensor:
        t = timesteps.to(sample.device).reshape(-1).to(torch.int64)
        return _ops.get_velocity(sample, noise, t, self._pk_table(sample.device))


class FusedDDPMScheduler(_FusedMixin, DDPMScheduler):
    """diffusers' DDPMScheduler with a fused `step` (variance_type "fixed_small")."""

    def _pk_prev_timestep(self, t, device):
        """previous_timestep without a host sync: the next entry of self.timesteps (-1
        after the last), found with device ops; t - 1 without an inference schedule."""
        if not (self.custom_timesteps or self.num_inference_steps):
            return t - 1
        ts = self.timesteps.to(device=device, dtype=torch.int64)
        following = torch.cat([ts[1:], ts.new_full((1,), -1)])
        t = torch.as_tensor(t, device=device, dtype=torch.int64)
        idx = (ts[:, None] == t.reshape(1, -1)).to(torch.int32).argmax(0)  # first match
        prev = following[idx]
        return prev.reshape(()) if prev.numel() == 1 else prev

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ):
        learned = (
            self.variance_type in ("learned", "learned_range")
            and model_output.shape[1] == sample.shape[1] * 2
        )
        if self.variance_type != "fixed_small" or learned:
            return super().step(
                model_output, timestep, sample, generator=generator, return_dict=return_dict
            )
        t = self._pk_timesteps(timestep, sample)
        prev = self._pk_prev_timestep(t, sample.device)
        host_zero = isinstance(timestep, int) or (
            isinstance(timestep, torch.Tensor)
            and timestep.device.type == "cpu"
            and timestep.numel() == 1
        )
        if host_zero and int(timestep) <= 0:  # as diffusers: no draw at t = 0
            noise = torch.zeros_like(sample)
        else:
            noise = _draw_noise(model_output, generator)
        prev_sample, x0 = _ops.ddpm_step(
            model_output,
            t,
            sample,
            self._pk_table(sample.device),
            prev_timesteps=prev,
            noise=noise,
            **_step_settings(self.config),
        )
        if not return_dict:
            return (prev_sample, x0)
        return DDPMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)


def _draw_noise(model_output: torch.Tensor, generator) -> torch.Tensor:
    """The step's noise as diffusers' schedulers draw it (randn_tensor, model_output's shape)."""
    return randn_tensor(
        model_output.shape,
        generator=generator,
        device=model_output.device,
        dtype=model_output.dtype,
    )


def _step_settings(config) -> dict:
    """The scheduler config's step settings, as the keyword arguments of the fused steps."""
    return dict(
        prediction_type=config.prediction_type,
        clip_sample=config.clip_sample,
        clip_sample_range=config.clip_sample_range,
        thresholding=config.thresholding,
        dynamic_thresholding_ratio=config.dynamic_thresholding_ratio,
        sample_max_value=config.sample_max_value,
    )


class FusedDDIMScheduler(_FusedMixin, DDIMScheduler):
    """diffusers' DDIMScheduler with a fused `step`."""

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ):
        if self.num_inference_steps is None:
            raise ValueError(
                "Number of inference steps is 'None', you need to run 'set_timesteps' "
                "after creating the scheduler"
            )
        t = self._pk_timesteps(timestep, sample)
        prev = t - self.config.num_train_timesteps // self.num_inference_steps
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError(
                    "Cannot pass both generator and variance_noise. Please make sure "
                    "that either `generator` or `variance_noise` stays `None`."
                )
            if variance_noise is None:
                variance_noise = _draw_noise(model_output, generator)
        prev_sample, x0 = _ops.ddim_step(
            model_output,
            t,
            prev,
            sample,
            self._pk_table(sample.device),
            eta=float(eta),
            noise=variance_noise,
            **_step_settings(self.config),
            use_clipped_model_output=use_clipped_model_output,
            final_alpha_cumprod=float(self.final_alpha_cumprod),
        )
        if not return_dict:
            return (prev_sample, x0)
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)


# ----------------------------------------------------------------------------- flow matching
from diffusers import FlowMatchEulerDiscreteScheduler  # noqa: E402
from diffusers.schedulers.scheduling_flow_match_euler_discrete import (  # noqa: E402
    FlowMatchEulerDiscreteSchedulerOutput,
)

from ..ops import flow_matching as _flow_ops  # noqa: E402

__all__ += ["FusedFlowMatchEulerDiscreteScheduler"]


class FusedFlowMatchEulerDiscreteScheduler(FlowMatchEulerDiscreteScheduler):
    """diffusers' FlowMatchEulerDiscreteScheduler (SD3, Flux) whose `step` is one fused
    kernel (pykernels.flow_match_euler_step: sample + (sigma_next - sigma) model_output in
    float32, returned in model_output's dtype) and never synchronises with the host:

    - the step index is a 0-dim int64 tensor on the sample's device, advanced in place,
      and the sigmas are gathered on the device, so a whole sampling loop can be captured
      in one CUDA graph. The first step finds its index from `timestep` with device ops
      (index_for_timestep's rule: the second match when the schedule repeats it), or
      takes `begin_index`. `step_index` reads the counter back (a sync, when asked).
    - `timestep` may hold one timestep per sample ([batch]): each sample steps from its
      own place in the schedule, looked up on the device on every call (the step index
      is then neither used nor advanced).
    - a timestep that is not in the schedule, or a step past its end, gives NaN samples
      where diffusers raises an IndexError after a host read.

    Constructor, config, `set_timesteps` (shift, dynamic shifting with `mu`,
    shift_terminal, Karras / exponential / beta sigmas, invert_sigmas), `scale_noise` and
    the output type are diffusers'. Options the fused step does not implement raise
    NotImplementedError naming the option: the config's `stochastic_sampling`,
    `step(per_token_timesteps=)`.
    """

    _PK_UNSUPPORTED_CONFIG = ("stochastic_sampling",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pk_check_config()
        self._pk_index = None
        self._pk_cache = None

    def _pk_check_config(self) -> None:
        for name in self._PK_UNSUPPORTED_CONFIG:
            value = getattr(self.config, name, None)
            if value:
                raise NotImplementedError(
                    f"FusedFlowMatchEulerDiscreteScheduler: config option '{name}' = {value!r} is "
                    f"not supported by the fused step; use diffusers' "
                    f"FlowMatchEulerDiscreteScheduler for it"
                )

    @property
    def step_index(self):
        """The step counter (None before the first step); reading it synchronises."""
        index = self.__dict__.get("_pk_index")
        return None if index is None else int(index)

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self._pk_index = None
        self._pk_cache = None

    def _pk_tables(self, device: torch.device):
        """(sigma, sigma_next, timesteps) tables of the current schedule on `device`, built
        once: entry i holds step i's sigmas, and the entries past the last step are NaN
        (a step index there: a step past the end, or a timestep not in the schedule)."""
        if self._pk_cache is None or self._pk_cache[0] != device:
            sigmas = self.sigmas.to(device=device, dtype=torch.float32)
            nan = torch.full((2,), float("nan"), device=device)
            self._pk_cache = (
                device,
                torch.cat([sigmas[:-1], nan]),
                torch.cat([sigmas[1:], nan]),
                self.timesteps.to(device),
            )
        return self._pk_cache[1:]

    @staticmethod
    def _pk_lookup(t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Index of each of t [K] in the schedule, with device ops: the second match where
        the schedule repeats it, else the first; len(timesteps) + 1 (no valid step) where
        it is missing."""
        match = timesteps.reshape(1, -1) == t.reshape(-1, 1)
        count = match.sum(1)
        nth = torch.where(count > 1, 2, 1)
        idx = ((match.cumsum(1) == nth[:, None]) & match).to(torch.int64).argmax(1)
        return torch.where(count > 0, idx, timesteps.shape[0] + 1)

    def _pk_counter(self, t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """This step's index from the device counter (started at begin_index, or where
        the first timestep is in the schedule), which then moves on by one."""
        device = timesteps.device
        if self._pk_index is None or self._pk_index.device != device:
            if self.begin_index is not None:
                if not 0 <= self.begin_index < timesteps.shape[0]:
                    raise ValueError(
                        f"FusedFlowMatchEulerDiscreteScheduler: begin_index "
                        f"{self.begin_index} is outside the schedule's "
                        f"{timesteps.shape[0]} steps"
                    )
                self._pk_index = torch.full((), self.begin_index, dtype=torch.int64, device=device)
            else:
                self._pk_index = self._pk_lookup(t.reshape(1), timesteps)[0]
        index = self._pk_index.clamp(max=timesteps.shape[0])  # past the end: the NaN entry
        self._pk_index.add_(1)
        return index

    def _pk_step_sigmas(self, timestep, sample: torch.Tensor):
        """(sigma, sigma_next) of this step: 0-dim tensors (the counter) or [batch]
        (per-sample timesteps), NaN where the step has no valid index."""
        sigma, sigma_next, timesteps = self._pk_tables(sample.device)
        t = torch.as_tensor(timestep, device=sample.device)
        if t.numel() > 1:
            if t.numel() != sample.shape[0]:
                raise ValueError(
                    f"FusedFlowMatchEulerDiscreteScheduler.step: argument 'timestep' "
                    f"must be one timestep or one per sample ({sample.shape[0]}), "
                    f"got shape {tuple(t.shape)}"
                )
            index = self._pk_lookup(t.reshape(-1), timesteps)
        else:
            index = self._pk_counter(t, timesteps)
        return torch.take(sigma, index), torch.take(sigma_next, index)

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: torch.Generator | None = None,
        per_token_timesteps: torch.Tensor | None = None,
        return_dict: bool = True,
    ):
        fn = "FusedFlowMatchEulerDiscreteScheduler.step"
        if isinstance(timestep, (int, bool)) or (
            isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()
        ):
            raise ValueError(
                f"{fn}: argument 'timestep' must be a value of scheduler.timesteps "
                f"(a float), not an integer index"
            )
        self._pk_check_config()
        if per_token_timesteps is not None:
            raise NotImplementedError(
                f"{fn}: argument 'per_token_timesteps' is not supported by "
                f"the fused step; pass one timestep per sample instead"
            )
        sigma, sigma_next = self._pk_step_sigmas(timestep, sample)
        # diffusers steps in float32 from the sample and returns model_output's dtype
        wide = torch.promote_types(model_output.dtype, sample.dtype)
        prev_sample = _flow_ops.flow_match_euler_step(
            model_output.to(wide), sample.to(wide), sigma, sigma_next
        )
        prev_sample = prev_sample.to(model_output.dtype)
        if not return_dict:
            return (prev_sample,)
        return FlowMatchEulerDiscreteSchedulerOutput(prev_sample=prev_sample)
