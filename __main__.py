"""kube-ec2: a self-managed Kubernetes cluster on EC2. Everything lives in components/."""

from components.program import build

build()
