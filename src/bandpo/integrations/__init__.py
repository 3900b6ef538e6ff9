"""Adapters that plug BandPO's losses into RL training frameworks (each imported on demand)."""
