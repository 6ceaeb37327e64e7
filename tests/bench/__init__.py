"""The benchmarks (`payhooks bench ingress|worker|delivery|all`): they drive the product
from outside, so they live beside the tests, not in the product's packages."""
