"""Keras' parameter count of ResNet-20 v1 for 32x32x3 inputs, built as Keras' CIFAR-10 ResNet
example builds it (resnet_v1, depth 20: He et al. 2016), to compare with
`cnnkit summary configs/resnet20.yaml`. Needs TensorFlow (never a cnnkit dependency):

    python benchmarks/keras/resnet20_params.py
"""

from tensorflow import keras
from tensorflow.keras import layers


def conv_bn(x, filters, kernel_size=3, strides=1, activation="relu", batch_norm=True):
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        kernel_initializer="he_normal",
        kernel_regularizer=keras.regularizers.l2(1e-4),
    )(x)
    if batch_norm:
        x = layers.BatchNormalization()(x)
    if activation:
        x = layers.Activation(activation)(x)
    return x


def resnet20(input_shape=(32, 32, 3), classes=10):
    inputs = keras.Input(shape=input_shape)
    x = conv_bn(inputs, 16)
    filters = 16
    for stage in range(3):
        for block in range(3):
            strides = 2 if stage > 0 and block == 0 else 1
            y = conv_bn(x, filters, strides=strides)
            y = conv_bn(y, filters, activation=None)
            if strides == 2:  # the projection shortcut
                x = conv_bn(x, filters, 1, strides, activation=None, batch_norm=False)
            x = layers.Activation("relu")(layers.add([x, y]))
        filters *= 2
    x = layers.AveragePooling2D(pool_size=8)(x)
    outputs = layers.Dense(classes, activation="softmax", kernel_initializer="he_normal")(
        layers.Flatten()(x)
    )
    return keras.Model(inputs, outputs)


if __name__ == "__main__":
    model = resnet20()
    model.summary(line_length=120)
    trainable = sum(int(w.shape.num_elements()) for w in model.trainable_weights)
    print(f"Keras ResNet-20: total {model.count_params():,}, trainable {trainable:,}")
