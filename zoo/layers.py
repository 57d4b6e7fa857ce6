"""Layers the core and the model families share."""
from torch import Tensor, nn


class SafeBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` that also trains on a batch holding a single value per channel.

    A 1x1 map in a batch of one (the pooled tokens of a small input) has no batch variance, and
    torch refuses to normalise it in training. Such a batch is normalised with the running
    statistics instead, as in eval, and leaves them unchanged; any other batch is plain BN.
    ``state_dict`` keys are those of ``nn.BatchNorm2d``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.track_running_stats and x.numel() == x.shape[1]:
            return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                            False, 0.0, self.eps)
        return super().forward(x)

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Replace each ``nn.BatchNorm2d`` below ``module``, in place, by one sharing its
        parameters and buffers."""
        for name, child in module.named_children():
            if type(child) is nn.BatchNorm2d:
                safe = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
                safe.weight, safe.bias = child.weight, child.bias
                safe.running_mean, safe.running_var = child.running_mean, child.running_var
                safe.num_batches_tracked = child.num_batches_tracked
                safe.train(child.training)
                setattr(module, name, safe)
            else:
                cls.convert(child)
        return module
