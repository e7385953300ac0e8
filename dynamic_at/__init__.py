"""dynamic_at: Dynamic Adversarial Training and FOSC in JAX.

Wang, Ma, Bailey, Yi, Zhou, Gu. "On the Convergence and Robustness of
Adversarial Training", ICML 2019. The public API is this list; the modules
behind it are private.
"""

from dynamic_at._apgd import apgd
from dynamic_at._apgd import apgd_checkpoints
from dynamic_at._apgd import apgd_targeted
from dynamic_at._apgd import APGDInfo
from dynamic_at._apgd import dlr_loss
from dynamic_at._apgd import dlr_targeted_loss
from dynamic_at._apgd import worst_case
from dynamic_at._attacks import cw_inf
from dynamic_at._attacks import fgsm
from dynamic_at._attacks import input_grad
from dynamic_at._attacks import LogitsFn
from dynamic_at._attacks import pgd
from dynamic_at._attacks import pgd10
from dynamic_at._attacks import pgd20
from dynamic_at._attacks import PGDInfo
from dynamic_at._attacks import random_start_point
from dynamic_at._fab import fab_targeted
from dynamic_at._fab import FABInfo
from dynamic_at._fosc import fosc
from dynamic_at._fosc import fosc_threshold
from dynamic_at._losses import cw_margin
from dynamic_at._losses import get_loss
from dynamic_at._losses import xent
from dynamic_at._square import square_attack
from dynamic_at._square import SquareInfo
from dynamic_at.zoo import list_models
from dynamic_at.zoo import load_pretrained
from dynamic_at.zoo import ZooError

__version__ = '0.1.0'

__all__ = (
    'apgd', 'apgd_checkpoints', 'apgd_targeted', 'APGDInfo', 'dlr_loss',
    'dlr_targeted_loss', 'worst_case',
    'cw_inf', 'cw_margin', 'fab_targeted', 'FABInfo', 'fgsm', 'fosc',
    'fosc_threshold', 'get_loss', 'input_grad', 'list_models',
    'load_pretrained', 'LogitsFn', 'pgd', 'pgd10', 'pgd20', 'PGDInfo',
    'random_start_point', 'square_attack', 'SquareInfo', 'xent', 'ZooError',
)
