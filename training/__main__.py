"""`python -m training fit ...` (and `torchrun ... -m training fit ...`): the same as `phaseforge-train`."""
from training.cli import main

if __name__ == "__main__":
    main()
