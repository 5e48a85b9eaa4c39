"""Pure placement, oversubscription, ledger and autoscaling policy, shared by the live components and the simulator."""
