"""Deployment: an analog network built on chip tiles (:mod:`labkit.deploy.deployment`)."""

from labkit.deploy.deployment import Deployment, TileDeployment, calibrate_tile, deploy

__all__ = ["Deployment", "TileDeployment", "calibrate_tile", "deploy"]
