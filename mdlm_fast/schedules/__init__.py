"""Schedules and their cost: MDLM's noise, which model runs at each step, when each step happens, FLOPs."""
