"""The NumPy neural-network core: layers as pure forward/backward pairs, activations
(each with its fast kernel), initializers, the softmax loss, optimizers, the
fully-connected model and its engine (``model``), BLAS threads while training
(``blas``), and the reference network the engine is tested against (``reference``,
imported only by tests and gradient-check tooling).

Imports only NumPy, the standard library and threadpoolctl (``blas``).  The three
registries are the single lists of choices the search space is built from::

    ACTIVATIONS   sigmoid, tanh, relu, leaky_relu, elu, maxout
    INITIALIZERS  small, xavier, he
    OPTIMIZERS    sgd, momentum, nesterov, adam
"""

from workers.nn.activations import ACTIVATIONS
from workers.nn.initializers import INITIALIZERS
from workers.nn.optimizers import OPTIMIZERS

__all__ = ["ACTIVATIONS", "INITIALIZERS", "OPTIMIZERS"]
