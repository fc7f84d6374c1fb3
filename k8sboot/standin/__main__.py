"""`python3 -m k8sboot.standin`: the stand-in's kube-apiserver command."""

import sys

from k8sboot.standin.main import main

sys.exit(main())
