"""`python -m trainer.ablate` = rotnet-ablate."""

from trainer.ablate import main

main()
