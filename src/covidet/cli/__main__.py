"""``python -m covidet.cli`` (and ``torchrun ... -m covidet.cli train``): the ``covidet`` command."""

from covidet.cli import main

# Guarded: a spawned child process (DataLoader workers, multiprocessing) imports this module as
# ``__mp_main__`` and must not run the command again.
if __name__ == "__main__":
    main()
