"""PyTorch eager reference of the benchmarked models, attack and step.

Imported only by the benchmarks (PyTorch is not a dependency of the project).
The models mirror :mod:`dynamic_at.models` layer for layer (3x3 'same' convs
with bias, BatchNorm momentum 0.1 / eps 1e-5, ReLU, 2x2 max pooling, dense
layers); layout is PyTorch's default NCHW.

The attack is the usual eager PGD: random start uniform in the eps-ball
(clipped to [0, 1]), ``num_steps`` steps ``x + step * sign(grad)`` projected
onto the ball and the box, gradient of the summed cross-entropy with respect
to the input only (``torch.autograd.grad(loss, x)``: no parameter gradients),
the model in eval mode (BatchNorm running statistics) during the attack and in
train mode for the update. It makes ``num_steps`` gradient evaluations; the
library's ``pgd`` makes ``num_steps + 1`` (the last one gives the reported
FOSC and loss), so the comparison slightly favours PyTorch.
"""

import torch
import torch.nn.functional as F
from torch import nn

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _bn2d(c):
  return nn.BatchNorm2d(c, momentum=0.1, eps=1e-5)


class MnistCNN(nn.Module):
  """conv32-BN-ReLU-pool, conv64-BN-ReLU-pool, dense128-ReLU, dense10."""

  def __init__(self, num_classes=10):
    super().__init__()
    self.features = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), _bn2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), _bn2d(64), nn.ReLU(), nn.MaxPool2d(2))
    self.fc1 = nn.Linear(7 * 7 * 64, 128)
    self.fc2 = nn.Linear(128, num_classes)

  def forward(self, x):
    x = self.features(x).flatten(1)
    return self.fc2(F.relu(self.fc1(x)))


class Cifar10CNN(nn.Module):
  """[conv64 x2, pool], [conv128 x2, pool], [conv196 x2, pool], each conv
  3x3 + BN + ReLU; dense256 + BN + ReLU; dense10; input normalised inside."""

  def __init__(self, num_classes=10):
    super().__init__()
    layers, cin = [], 3
    for c in (64, 128, 196):
      for _ in range(2):
        layers += [nn.Conv2d(cin, c, 3, padding=1), _bn2d(c), nn.ReLU()]
        cin = c
      layers.append(nn.MaxPool2d(2))
    self.features = nn.Sequential(*layers)
    self.fc1 = nn.Linear(4 * 4 * 196, 256)
    self.bn = nn.BatchNorm1d(256, momentum=0.1, eps=1e-5)
    self.fc2 = nn.Linear(256, num_classes)
    self.register_buffer('mean', torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1))
    self.register_buffer('std', torch.tensor(CIFAR10_STD).view(1, 3, 1, 1))

  def forward(self, x):
    x = self.features((x - self.mean) / self.std).flatten(1)
    return self.fc2(F.relu(self.bn(self.fc1(x))))


MODELS = {'mnist_cnn': MnistCNN, 'cifar10_cnn': Cifar10CNN}


def pgd(model, x0, y, *, eps, step_size, num_steps, random_start=True):
  """L-inf PGD in eval mode; returns the detached adversarial batch."""
  was_training = model.training
  model.eval()
  x = x0
  if random_start:
    x = (x0 + torch.empty_like(x0).uniform_(-eps, eps)).clamp(0.0, 1.0)
  lo, hi = x0 - eps, x0 + eps
  for _ in range(num_steps):
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction='sum')
    (g,) = torch.autograd.grad(loss, x)
    with torch.no_grad():
      x = torch.minimum(torch.maximum(x + step_size * g.sign(), lo), hi)
      x = x.clamp(0.0, 1.0)
  model.train(was_training)
  return x.detach()


def make_optimizer(model, lr=0.01, momentum=0.9, weight_decay=0.0):
  return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                         weight_decay=weight_decay)


def train_step(model, opt, x0, y, *, eps, step_size, num_steps):
  """One adversarial training step (``num_steps == 0``: clean training)."""
  x = x0
  if num_steps:
    x = pgd(model, x0, y, eps=eps, step_size=step_size, num_steps=num_steps)
  model.train()
  opt.zero_grad(set_to_none=True)
  logits = model(x)
  loss = F.cross_entropy(logits, y)
  loss.backward()
  opt.step()
  return loss.detach()


def pgd_eval(model, x0, y, *, eps, step_size, num_steps):
  """PGD attack in eval mode then the accuracy on its output."""
  x = pgd(model, x0, y, eps=eps, step_size=step_size, num_steps=num_steps)
  with torch.no_grad():
    return (model(x).argmax(-1) == y).float().mean()


def to_torch_images(x_nhwc):
  """numpy NHWC -> contiguous torch NCHW float32."""
  return torch.from_numpy(x_nhwc).permute(0, 3, 1, 2).contiguous()
