"""tflab's stand-in for TensorFlow Serving, one module per unit of tensorflow_serving/ (model_servers/,
servables/tensorflow/, batching/, util/); remote/model_server.py runs it. Each module names the upstream file
it follows."""
