# Passed as CMAKE_TOOLCHAIN_FILE when building horovod 0.28.1 from source. Horovod's CMake asks
# for C++14 and strips -std= from CXXFLAGS, while torch 2.x headers need C++17: the project
# include below makes every C++11/14 request compile as C++17, without editing Horovod's source.
set(CMAKE_PROJECT_INCLUDE "${CMAKE_CURRENT_LIST_DIR}/cxx17.cmake")
