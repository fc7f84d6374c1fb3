"""k8sboot: bootstrap a self-hosted Kubernetes control plane the hard way.

This module imports nothing: the lab's kube-apiserver stand-in ships this package's
`authn` module to hosts that have only python3 and Debian's cryptography and PyJWT.
"""

__version__ = "0.1.0"
