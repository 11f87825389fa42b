"""Walkers for the rodent tasks: the dm_control rat, a mouse derived from it, and
a cheap rolling ball for fast tests. Build them with `tasks.base.make_walker`."""
