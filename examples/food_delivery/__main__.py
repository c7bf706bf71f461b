"""python -m examples.food_delivery: see run.py."""

from examples.food_delivery.run import main

if __name__ == "__main__":
    raise SystemExit(main())
