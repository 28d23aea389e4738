"""MatmulLinear: the base of a structured layer defined by its product on 2-D inputs (the DYAD, Monarch and
BTT families, families/). Like every Linear-like layer it takes (..., d_in), returns (..., d_out), and
offers `dense_weight()` and `bias`, so that `layer(x) == x @ layer.dense_weight().T + layer.bias`.
"""
import torch
import torch.nn as nn



class MatmulLinear(nn.Module):
    """A Linear-like layer defined by `_matmul(x2d)`, its product on (N, d_in) inputs without the bias:
    forward for any leading shape, plus the bias, and `dense_weight()` as the product of the identity."""

    def forward(self, x):
        y = self._matmul(x.reshape(-1, self.in_features)).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def dense_weight(self):
        p = next(self.parameters())
        return self._matmul(torch.eye(self.in_features, dtype=p.dtype, device=p.device)).T
