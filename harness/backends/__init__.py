"""Deployment backends: where a scenario's brokers, workers and beats run."""
