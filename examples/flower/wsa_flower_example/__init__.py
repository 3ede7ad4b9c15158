"""FedAvg + WSA on Flower: a ServerApp with FedAvgWSA and a ClientApp with its own training loop."""
