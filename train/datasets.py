"""Dataset names the training commands accept, in a torch-free module so the CLI can list them at start."""

DATASETS = ("fashion-mnist", "mnist-png", "imagefolder")
