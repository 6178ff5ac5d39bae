"""The NumPy neural-network core: layers as pure forward/backward pairs, activations,
initializers, the softmax loss, optimizers, and the fully-connected model.

Imports only NumPy and the standard library.  The three registries are the single lists
of choices the search space is built from::

    ACTIVATIONS   sigmoid, tanh, relu, leaky_relu, elu, maxout
    INITIALIZERS  small, xavier, he
    OPTIMIZERS    sgd, momentum, nesterov, adam
"""

from workers.nn.activations import ACTIVATIONS
from workers.nn.initializers import INITIALIZERS
from workers.nn.optimizers import OPTIMIZERS

__all__ = ["ACTIVATIONS", "INITIALIZERS", "OPTIMIZERS"]
